"""Home Assistant's MQTT discovery rules, written as JSON Schema for the tests.

They follow Home Assistant's own MQTT platform schemas (homeassistant/components/mqtt/*.py, voluptuous) for
what lineguard announces: the keys each platform requires, the values it takes, the shared availability, device
and origin blocks, and the discovery topic layout. Home Assistant itself needs Python 3.13 and cannot run in the
test environment, so its rules are restated here, key by key.
"""
from __future__ import annotations

import re

# <discovery_prefix>/<component>/[<node_id>/]<object_id>/config (homeassistant/components/mqtt/discovery.py)
TOPIC_PATTERN = re.compile(r"^(?P<prefix>.+?)/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?"
                           r"(?P<object_id>[a-zA-Z0-9_-]+)/config$")
TOPIC_KEYS = ("state_topic", "command_topic", "json_attributes_topic", "image_topic", "url_topic",
              "availability_topic")
TEMPLATE = {"type": "string", "minLength": 1}
TOPIC = {"type": "string", "minLength": 1, "not": {"pattern": "[+#]"}}  # a publish topic has no wildcards
QOS = {"enum": [0, 1, 2]}
ENTITY_CATEGORY = {"enum": ["config", "diagnostic"]}

AVAILABILITY = {
    "type": "array", "minItems": 1,
    "items": {"type": "object", "required": ["topic"], "additionalProperties": False,
              "properties": {"topic": TOPIC, "payload_available": {"type": "string"},
                             "payload_not_available": {"type": "string"}, "value_template": TEMPLATE}},
}
DEVICE = {  # a device needs identifiers or connections
    "type": "object", "anyOf": [{"required": ["identifiers"]}, {"required": ["connections"]}],
    "additionalProperties": False,
    "properties": {"identifiers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                   "connections": {"type": "array"}, "name": {"type": "string"}, "manufacturer": {"type": "string"},
                   "model": {"type": "string"}, "model_id": {"type": "string"}, "sw_version": {"type": "string"},
                   "hw_version": {"type": "string"}, "serial_number": {"type": "string"},
                   "configuration_url": {"type": "string"}, "suggested_area": {"type": "string"},
                   "via_device": {"type": "string"}},
}
ORIGIN = {"type": "object", "required": ["name"], "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "sw_version": {"type": "string"},
                         "support_url": {"type": "string"}}}
COMMON = {  # MQTT_ENTITY_COMMON_SCHEMA and MQTT_AVAILABILITY_SCHEMA
    "unique_id": {"type": "string", "minLength": 1}, "name": {"type": ["string", "null"]},
    "availability": AVAILABILITY, "availability_mode": {"enum": ["all", "any", "latest"]},
    "device": DEVICE, "origin": ORIGIN, "entity_category": ENTITY_CATEGORY, "icon": {"type": "string"},
    "enabled_by_default": {"type": "boolean"}, "json_attributes_topic": TOPIC,
    "json_attributes_template": TEMPLATE, "qos": QOS, "encoding": {"type": "string"},
    "default_entity_id": {"type": "string"},
}
PLATFORMS = {
    "binary_sensor": {
        "required": ["state_topic"],
        "properties": {"state_topic": TOPIC, "value_template": TEMPLATE, "payload_on": {"type": "string"},
                       "payload_off": {"type": "string"}, "expire_after": {"type": "integer", "minimum": 0},
                       "force_update": {"type": "boolean"}, "off_delay": {"type": "integer", "minimum": 0},
                       "device_class": {"enum": ["battery", "battery_charging", "carbon_monoxide", "cold",
                                                 "connectivity", "door", "garage_door", "gas", "heat", "light",
                                                 "lock", "moisture", "motion", "moving", "occupancy", "opening",
                                                 "plug", "power", "presence", "problem", "running", "safety",
                                                 "smoke", "sound", "tamper", "update", "vibration", "window"]}},
    },
    "sensor": {
        "required": ["state_topic"],
        "properties": {"state_topic": TOPIC, "value_template": TEMPLATE, "unit_of_measurement": {"type": "string"},
                       "state_class": {"enum": ["measurement", "measurement_angle", "total", "total_increasing"]},
                       "device_class": {"type": "string"}, "suggested_display_precision": {"type": "integer"},
                       "expire_after": {"type": "integer", "minimum": 0}, "force_update": {"type": "boolean"},
                       "entity_category": {"const": "diagnostic"}},  # a sensor cannot be a config entity
        # device_class duration takes only these units (homeassistant/components/sensor/const.py)
        "if": {"required": ["device_class"], "properties": {"device_class": {"const": "duration"}}},
        "then": {"required": ["unit_of_measurement"],
                 "properties": {"unit_of_measurement": {"enum": ["d", "h", "min", "s", "ms", "µs"]}}},
    },
    "image": {  # exactly one of image_topic and url_topic
        "oneOf": [{"required": ["image_topic"]}, {"required": ["url_topic"]}],
        "properties": {"image_topic": TOPIC, "url_topic": TOPIC, "content_type": {"type": "string"},
                       "image_encoding": {"const": "b64"}, "url_template": TEMPLATE},
    },
    "button": {
        "required": ["command_topic"],
        "properties": {"command_topic": TOPIC, "command_template": TEMPLATE, "payload_press": {"type": "string"},
                       "retain": {"type": "boolean"}, "device_class": {"enum": ["identify", "restart", "update"]}},
    },
    "number": {
        "required": ["command_topic"],
        "properties": {"command_topic": TOPIC, "command_template": TEMPLATE, "state_topic": TOPIC,
                       "value_template": TEMPLATE, "min": {"type": "number"}, "max": {"type": "number"},
                       "step": {"type": "number", "minimum": 0.001}, "mode": {"enum": ["auto", "box", "slider"]},
                       "retain": {"type": "boolean"}, "optimistic": {"type": "boolean"},
                       "unit_of_measurement": {"type": "string"}, "device_class": {"type": "string"},
                       "payload_reset": {"type": "string"}},
    },
}


def schema_for(component: str) -> dict:
    """The JSON Schema of one platform's discovery payload (unknown keys refused, as Home Assistant warns)."""
    platform = PLATFORMS[component]
    properties = {**COMMON, **platform["properties"]}
    schema = {"type": "object", "required": ["unique_id", "device", *platform.get("required", [])],
              "properties": properties, "additionalProperties": False}
    schema.update({key: platform[key] for key in ("oneOf", "if", "then") if key in platform})
    return schema
