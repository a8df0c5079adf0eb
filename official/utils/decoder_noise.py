"""Keeps what TensorFlow's image decoders print about an image they refuse off stderr.

An image that passes our checks but that TensorFlow cannot decode (a marker inside a JPEG's
compressed data) becomes an error row of its own (official/core/prediction.py), and that row
says why. Its decoding also printed, above the program's summary, four lines that read like
a crash, twice (the batch, then the image alone):

    Corrupt JPEG data: premature end of data segment          libjpeg, fprintf(stderr)
    Input file read error                                     libjpeg, fprintf(stderr)
    W0000 ... local_rendezvous.cc:412] Local rendezvous is aborting with status:
        INVALID_ARGUMENT: jpeg::Uncompress failed. ...         TensorFlow's C++ log
    \t [[{{function_node ...}}{{node map/while/decode_image/DecodeImage}}]]   (its context)

TF_CPP_MIN_LOG_LEVEL=2 hides only the third and fourth, and every other warning of
TensorFlow's with them; libjpeg writes to file descriptor 2 through TensorFlow's error handler
(tensorflow/core/lib/jpeg/jpeg_handle.cc CatchError calls libjpeg's output_message), which
no setting reaches. So file descriptor 2 is lent to a pipe for each call of the decoder, and
a small relay process writes what came through it to the real stderr when the call ends:
all of it, but for a call that raised the decoder's refusal, without the lines above.

Nothing that is not one of those lines is dropped, and nothing is lost if the program dies
inside a call: the relay is a process of its own, which on end of input (every writer gone)
writes what it holds as it came. What other threads write during a call (warnings, a log
line) reaches stderr when the call ends, in order. The relay is started once per run, ~15 ms.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys

# libjpeg(-turbo)'s messages about damaged data (jerror.h: the JWRN_ warnings, printed once
# per image, and the JERR_ errors of a bad file). Those of a bug or a lack of memory
# ("Insufficient memory (case 4)", "Improper call to JPEG library in state 200") are not here:
# they must reach the user.
_LIBJPEG = re.compile("|".join([
    r"Corrupt JPEG data: (premature end of data segment|bad (Huffman|arithmetic) code)",
    r"Corrupt JPEG data: \d+ extraneous bytes before marker 0x[0-9a-f]{2}",
    r"Corrupt JPEG data: found marker 0x[0-9a-f]{2} instead of RST\d+",
    r"Premature end of (JPEG|input) file", r"Input file read error", r"Empty input file",
    r"Invalid JPEG file structure: (two SOF markers|missing SOS marker|two SOI markers|SOS "
    r"before SOF)",
    r"Not a JPEG file: starts with 0x[0-9a-f]{2} 0x[0-9a-f]{2}",
    r"Unsupported marker type 0x[0-9a-f]{2}", r"Unsupported JPEG process: SOF type 0x[0-9a-f]{2}",
    r"Unsupported JPEG data precision \d+",
    r"Bogus (marker length|Huffman table definition|sampling factors|JPEG colorspace)",
    r"Bogus (DHT|DQT|DAC) index \d+", r"Bogus DAC value 0x[0-9a-f]+",
    r"(Huffman|Quantization|Arithmetic) table 0x[0-9a-f]{2} was not defined",
    r"Invalid component ID \d+ in SOS", r"Invalid SOS parameters for sequential JPEG",
    r"Invalid progressive parameters Ss=\d+ Se=\d+ Ah=\d+ Al=\d+",
    r"Inconsistent progression sequence for component \d+ coefficient \d+",
    r"Didn't expect more than one scan", r"JPEG datastream contains no image",
    r"Empty JPEG image \(DNL not supported\)", r"Sampling factors too large for interleaved scan",
    r"Too many color components: \d+, max \d+", r"Maximum supported image dimension is \d+ pixels",
    r"Image too wide for this implementation", r"Huffman code size table overflow",
    r"Missing Huffman code table entry", r"DCT coefficient out of range",
    r"Warning: unknown JFIF revision number \d+\.\d+", r"Unknown Adobe color transform code \d+",
]))
# TensorFlow's echo of the refusal the call raised (absl's format: level, date, time, thread,
# file:line]); an abort for another reason (RESOURCE_EXHAUSTED: out of memory) stays.
_TF_ABORT = re.compile(r"[IWEF]\d{4} [\d:.]+ +\d+ local_rendezvous\.cc:\d+\] Local rendezvous "
                       r"is aborting with status: INVALID_ARGUMENT: ")
_NODE_CONTEXT = re.compile(r"\s+\[\[.*\]\]\s*")  # the op that failed, on the lines after it
_DROP, _KEEP = b"d", b"k"
_PROGRAM_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # meant for the program, not the relay


def without_noise(text: bytes) -> bytes:
    """``text`` without the decoder's lines about an image it refused (libjpeg's messages,
    TensorFlow's INVALID_ARGUMENT abort and its node lines); the other lines as they were."""
    kept, after_abort = [], False
    for line in text.splitlines(keepends=True):
        words = line.decode("utf-8", "replace").rstrip("\r\n")
        if _TF_ABORT.match(words) or (after_abort and _NODE_CONTEXT.fullmatch(words)):
            after_abort = True
        elif not _LIBJPEG.fullmatch(words):
            kept.append(line)
            after_abort = False
    return b"".join(kept)


class DecoderNoise:
    """``with DecoderNoise() as noise:`` starts the relay; each decoder call runs in
    ``with noise.dropped_if(ImageError):`` (one call at a time). Not entered (or where file
    descriptors cannot be lent: not POSIX, no stderr, no relay), dropped_if changes nothing;
    a relay killed from outside ends the filtering (what the call it died in printed is
    lost, as it would be if the program were killed)."""

    # How long a call's end waits for the relay to pass its lines on (a reader of stderr
    # that does not keep up); after that the calls write to stderr directly.
    ACK_SECONDS = 30.0

    def __init__(self):
        self._relay = None

    def __enter__(self) -> DecoderNoise:
        if os.name != "posix":
            return self
        opened = []
        try:
            self._stderr = os.dup(2)
            opened.append(self._stderr)
            source, self._pipe = os.pipe()
            opened += [source, self._pipe]
            self._acks, ack = os.pipe()
            opened += [self._acks, ack]
            self._end = b"\0" + os.urandom(8).hex().encode() + b"\0"  # no program prints it
            # Its stderr is the real one; it outlives this process if this one dies mid-call.
            # It is born with Ctrl-C and SIGTERM blocked (a signal mask survives exec): one
            # sent to the process group in its first ~30 ms, before it ignores them, killed
            # it (filtering off) or printed its startup's KeyboardInterrupt traceback.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, _PROGRAM_SIGNALS)
            try:
                self._relay = subprocess.Popen(
                    [sys.executable, "-I", "-S", os.path.abspath(__file__), str(source),
                     str(ack), self._end.hex()], pass_fds=(source, ack),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            finally:  # this process's own Ctrl-C, if one came meanwhile, arrives now
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        except OSError:  # stderr closed, no descriptors or processes left: stderr as it is
            self._close(*opened)
            return self
        self._close(source, ack)
        return self

    def __exit__(self, *exc) -> None:
        if self._relay is not None:
            self._stop(wait=5.0)

    @contextlib.contextmanager
    def dropped_if(self, refused: type[BaseException]):
        """Runs the block with file descriptor 2 lent to the relay; when the block raises
        ``refused``, the decoder's lines about the image (without_noise) are dropped."""
        if self._relay is not None and self._relay.poll() is not None:  # killed: no reader
            self._stop(wait=0)
        if self._relay is None:
            yield
            return
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()  # what Python printed before the call is not held back
        os.dup2(self._pipe, 2)
        verdict = _KEEP
        try:
            yield
        except refused:
            verdict = _DROP
            raise
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(self._stderr, 2)
            # After the restore: whatever went through the pipe precedes the end mark. A relay
            # gone (killed) must not replace the block's own exception with a broken pipe.
            if not self._acknowledged(self._end + verdict):
                self._stop(wait=0)

    def _acknowledged(self, end: bytes) -> bool:
        """Ends the call (``end``: the mark and the verdict); whether the relay wrote out its
        lines, so that what is printed next comes after them."""
        try:
            os.write(self._pipe, end)
            ready, _, _ = select.select([self._acks], [], [], self.ACK_SECONDS)
            return bool(ready) and os.read(self._acks, 1) == b"."
        except OSError:
            return False

    def _stop(self, wait: float) -> None:
        """Closes the pipe: the relay writes out anything it still holds, then ends."""
        relay, self._relay = self._relay, None
        self._close(self._pipe, self._acks, self._stderr)
        with contextlib.suppress(subprocess.TimeoutExpired):
            relay.wait(wait)

    @staticmethod
    def _close(*descriptors: int) -> None:
        for descriptor in descriptors:
            with contextlib.suppress(OSError):
                os.close(descriptor)


def _relay(source: int, ack: int, end: bytes) -> None:
    """The relay process: copies ``source`` to stderr a call at a time (up to ``end`` and a
    verdict), without the decoder's lines after a refusal; acknowledges each call on ``ack``.
    Input left at end of file (the program died inside a call) is written as it came."""
    # A Ctrl-C or SIGTERM meant for the program must not end its stderr first; this process
    # ends when the program's end of the pipe closes. (Blocked since birth: ignoring them
    # drops any that came during startup, and the mask can stay.)
    for number in _PROGRAM_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    # Each chunk is searched for the end mark from where the last search stopped: searching
    # (and copying) all of a call's output per 64 KiB made a call printing 32 MiB take 9 s.
    pending, searched = bytearray(), 0
    while chunk := os.read(source, 1 << 16):
        pending += chunk
        while (at := pending.find(end, searched)) >= 0 and len(pending) > at + len(end):
            call, verdict = bytes(pending[:at]), pending[at + len(end):at + len(end) + 1]
            del pending[:at + len(end) + 1]
            searched = 0
            _write(without_noise(call) if verdict == _DROP else call)
            with contextlib.suppress(OSError):  # the program stopped listening (_stop)
                os.write(ack, b".")
        searched = max(0, len(pending) - len(end))  # a mark may straddle two chunks
    _write(bytes(pending))


def _write(data: bytes) -> None:
    """To stderr; a reader gone (`2>&1 | head`) loses it, but the relay goes on reading."""
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(2, data):]


if __name__ == "__main__":
    _relay(int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3]))
