"""MQTT access points: device profiles and the mapping of their messages to events."""
