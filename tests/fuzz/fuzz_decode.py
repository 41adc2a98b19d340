"""Coverage-guided fuzz target (atheris/libFuzzer) for the collector's decoder.

Every input is split into frames and handed to ``decode_request`` (what the collector's ingest
does with each message), and its events to ``decode_event``: anything other than
:class:`ProtocolError` escaping is a crash that libFuzzer reports with the input that caused it.
One input in eight goes to ``reports.decode_call`` instead (a Logger call read back from its
file by the collector's replay), which may raise only the errors the replay catches.

    python tests/fuzz/fuzz_decode.py -max_total_time=60 [corpus_dir]

``tests/e2e/test_fuzz.py`` runs it for a bounded time in the suite.
"""

from __future__ import annotations

import contextlib
import sys

import atheris
import msgspec

with atheris.instrument_imports():
    from producer.wire import protocol, reports


def one_input(data: bytes) -> None:
    """Decode ``data`` as the collector would; only ProtocolError may come out."""
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeIntInRange(0, 7) == 0:
        # A Logger call spilled into a file, as the collector's replay decodes it.
        with contextlib.suppress(msgspec.MsgspecError, ValueError, RecursionError):
            reports.decode_call(fdp.ConsumeBytes(4096))
        return
    frames = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512)) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if fdp.ConsumeBool():
        frames.insert(0, protocol.HEADER)  # reach past the version check more often
    try:
        request, _ = protocol.decode_request(frames, max_body=4096)
    except protocol.ProtocolError:
        return
    if isinstance(request, protocol.Submit):
        for raw in request.events:
            try:
                protocol.decode_event(bytes(raw))
            except protocol.ProtocolError:
                continue


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
