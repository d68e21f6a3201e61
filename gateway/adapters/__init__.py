"""Adapters: the gateway's links to devices and peers, one subpackage per protocol."""
