"""Who may log in: operator-issued tokens and the user sources giving SIP credentials."""
