class ListPortInfo:
    device: str
    name: str
    description: str
    hwid: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    location: str | None
    manufacturer: str | None
    product: str | None
    interface: str | None

def comports(include_links: bool = ...) -> list[ListPortInfo]: ...
