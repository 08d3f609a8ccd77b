"""Edge SIP back-to-back user agent: a Kamailio edge in front of pjsua2 workers."""

__version__ = "0.1.0"
