"""The device table: everything model-specific about a recorder, keyed by USB VID:PID.

A real recorder model is one ``BodyCamModel`` entry (``register_model``); the driver code
never branches on a model by name."""

from __future__ import annotations

from dataclasses import dataclass

from firmware_bridge import bodycam_usb as f9

from .names import DEFAULT_NAME_PATTERN


@dataclass(frozen=True)
class BodyCamModel:
    """Everything model-specific: a real recorder is one of these (plus a subclass if it must)."""

    vendor_id: int
    product_id: int
    name: str
    layout: f9.ZfyLayout = f9.ZFY_LAYOUT_94
    opcode: int = f9.VENDOR_OPCODE
    endpoint_in: int = 0x81
    endpoint_out: int = 0x02
    lun: int = 0
    name_pattern: str = DEFAULT_NAME_PATTERN
    default_password: str = f9.DEFAULT_PASSWORD


SIMULATOR_MODEL = BodyCamModel(0x1209, 0x0001, "egw simulated body camera (docs/protocols/bodycam-usb.md)")
DEVICE_TABLE: dict[tuple[int, int], BodyCamModel] = {(SIMULATOR_MODEL.vendor_id, SIMULATOR_MODEL.product_id): SIMULATOR_MODEL}


def register_model(model: BodyCamModel) -> None:
    DEVICE_TABLE[(model.vendor_id, model.product_id)] = model


def lookup_model(vendor_id: int, product_id: int) -> BodyCamModel | None:
    return DEVICE_TABLE.get((vendor_id, product_id))
