"""Coverage-guided fuzz target (atheris/libFuzzer) for the collector's decoder.

Every input is split into frames and handed to ``decode_request`` (what the collector's ingest
does with each message), and its events to ``decode_event``: anything other than
:class:`ProtocolError` escaping is a crash that libFuzzer reports with the input that caused it.

    python tests/fuzz/fuzz_decode.py -max_total_time=60 [corpus_dir]

``tests/e2e/test_fuzz.py`` runs it for a bounded time in the suite.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from producer.wire import protocol


def one_input(data: bytes) -> None:
    """Decode ``data`` as the collector would; only ProtocolError may come out."""
    fdp = atheris.FuzzedDataProvider(data)
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
