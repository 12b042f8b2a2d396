-- mpb2bua_push_asr.lua (EXAMPLE, run by dialplan/default/mpb2bua_asr.xml): send the recognised
-- text as JSON in a SIP INFO on this channel; the mini-program gets it as an `info` event with
-- body {type: "asr", final: true, text: "..."} (docs/protocol.md §9.8).
local result = session:getVariable("detect_speech_result") or ""
-- NLSML (MRCP engines): the text is in <input>...</input>; adapt to your engine's format
local text = result:match("<input[^>]*>(.-)</input>") or result
-- keep the JSON valid: no control characters, quotes or backslashes from the engine
text = text:gsub('[%c"\\]', "")
local json = '{"type":"asr","final":true,"text":"' .. text .. '"}'
freeswitch.API():executeString("uuid_send_info " .. session:get_uuid() .. " application json " .. json)
