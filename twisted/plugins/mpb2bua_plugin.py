from twisted.application.service import ServiceMaker

mpb2bua = ServiceMaker("mpb2bua", "b2bua.tap", "WeChat mini-program to SIP gateway.", "mpb2bua")
