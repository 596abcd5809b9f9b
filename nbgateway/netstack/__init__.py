"""Userspace TCP/IP stack over the WireGuard device, exposed as Twisted transports."""
