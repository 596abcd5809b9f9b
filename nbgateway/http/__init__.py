"""The front resource: everything between a parsed HTTP request and the
reverse proxy (front-door hygiene, Host -> service entry, access restrictions,
the private gate's verdict, the access-log entry); see :mod:`.site`."""
