"""``asdseg devices``: the GPU torch can use here and the precision ``auto`` picks."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    devices = commands.add_parser("devices", help="the GPU torch can use here and the auto precision")
    devices.set_defaults(handler=command_devices)


def command_devices(args: argparse.Namespace) -> int:
    from asdseg.devices import auto_precision, describe_available_devices, select_device

    print(f"{describe_available_devices()}; auto precision: {auto_precision(select_device('auto'))}")
    return 0
