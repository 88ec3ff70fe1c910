"""What a video's coded packets declare before anything is decoded: the size of the frames they will decode to, read
from each codec's own headers (JPEG SOF, H.264 and HEVC sequence parameter sets, the MPEG-4 VOL header, VP8 and VP9
frame headers).

A container's width and height are only a hint: the decoder allocates what the bitstream says, frame by frame (a
hostile MJPEG AVI declares 64x64 and carries a 16000x16000 JPEG in its third packet). These parsers read those
headers from the packets, so every frame's size can be checked before the decoder sees it. Pure functions over
bytes; nothing here decodes a picture.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

MJPEG, H264, HEVC, MPEG4, VP8, VP9, RAW = "MJPEG", "H.264", "HEVC", "MPEG-4", "VP8", "VP9", "raw"
# OpenCV's CAP_PROP_FOURCC for the FFmpeg decoders we accept: a code per decoder, whatever the container's tag
# ("avc1", "XVID", "mjpa" ...); 0 is the uncompressed video of an AVI (checked from its packets' sizes). Any other
# decoder is refused before a frame is decoded: its frame sizes could not be checked.
CODECS = {b"MJPG": MJPEG, b"h264": H264, b"hevc": HEVC, b"FMP4": MPEG4, b"VP80": VP8, b"VP90": VP9, b"\0\0\0\0": RAW}
# Frames of the coded size a decoder holds at once, besides the one it outputs: its references (H.264 and HEVC say
# how many in their sequence headers, which `Header.held` reports) and the picture being decoded.
HELD = {MJPEG: 1, RAW: 1, MPEG4: 3, VP8: 4, VP9: 9, H264: 17, HEVC: 17}


@dataclass(frozen=True)
class Header:
    """A frame size declared by a packet: width and height in pixels, and frames of that size the decoder may hold
    (references included)."""

    width: int
    height: int
    held: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


class _Bits:
    """A big-endian bit reader; reading past the end raises IndexError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        """Exp-Golomb code (H.264/HEVC ue(v)); more than 31 leading zeros is not a valid header."""
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise IndexError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def headers(codec: str, packet: bytes, declared_height: int) -> list[Header]:
    """Every frame size `packet` declares; empty when it declares none (its frames keep the size in force).
    `declared_height`: the container's, which decides whether an MJPEG packet holds one field of an interlaced
    frame (FFmpeg then doubles its height). Malformed headers are skipped: the decoder refuses those too."""
    if codec == MJPEG:
        return _jpeg(packet, declared_height)
    if codec == H264:
        return [h for nal in _nals(packet, 7, lambda b: b & 0x1F, 1) if (h := _h264_sps(nal)) is not None]
    if codec == HEVC:
        return [h for nal in _nals(packet, 33, lambda b: (b >> 1) & 0x3F, 2) if (h := _hevc_sps(nal)) is not None]
    if codec == MPEG4:
        return [h for vol in _mpeg4_vols(packet) if (h := _mpeg4_vol(vol)) is not None]
    if codec == VP8:
        return _vp8(packet)
    if codec == VP9:
        return [h for frame in _vp9_frames(packet) if (h := _vp9(frame)) is not None]
    return []


def extradata_headers(codec: str, data: bytes) -> list[Header]:
    """The sizes in a stream's codec configuration (the container's extradata), which a decoder reads before the
    first packet: an avcC/hvcC record (MP4, MKV), or headers with start codes (an MPEG-4 VOL, Annex B)."""
    if codec in (H264, HEVC) and data[:1] == b"\x01":
        nals = _avcc(data) if codec == H264 else _hvcc(data)
        parse = _h264_sps if codec == H264 else _hevc_sps
        skip = 1 if codec == H264 else 2
        return [h for nal in nals if (h := parse(nal[skip:].replace(b"\x00\x00\x03", b"\x00\x00"))) is not None]
    return headers(codec, data, 0)


def _avcc(data: bytes) -> list[bytes]:
    """The SPS NAL units of an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1)."""
    out, at = [], 6
    for _ in range(data[5] & 0x1F if len(data) > 5 else 0):
        length = int.from_bytes(data[at : at + 2], "big")
        out.append(data[at + 2 : at + 2 + length])
        at += 2 + length
    return out


def _hvcc(data: bytes) -> list[bytes]:
    """The SPS NAL units (type 33) of an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1)."""
    out, at = [], 23
    for _ in range(data[22] if len(data) > 22 else 0):
        kind = data[at] & 0x3F if at < len(data) else -1
        count, at = int.from_bytes(data[at + 1 : at + 3], "big"), at + 3
        for _ in range(count):
            length = int.from_bytes(data[at : at + 2], "big")
            if kind == 33:
                out.append(data[at + 2 : at + 2 + length])
            at += 2 + length
    return out


# --- JPEG (MJPEG): the SOF segment of each picture in the packet -----------------------------------------------

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # SOF0-15 but DHT, JPG, DAC; JPEG-LS SOF55
_RST = frozenset(range(0xD0, 0xD8))
_STANDALONE = _RST | {0x01, 0xD8}  # RSTn, TEM, SOI: no length field
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy-coded data, 0xFF is followed by 0 or RSTn


def _jpeg(packet: bytes, declared_height: int) -> list[Header]:
    """The SOF of each JPEG picture in the packet (two for the fields of an interlaced frame), walking the segments
    as a decoder does: by their lengths, so bytes inside APPn segments (EXIF thumbnails) are never taken for one."""
    found: list[Header] = []
    i = packet.find(b"\xff\xd8")
    while 0 <= i < len(packet) - 3 and len(found) < 16:
        i += 2
        while i < len(packet) - 3:
            marker = packet[i + 1]
            if packet[i] != 0xFF or marker == 0x00 or marker in _RST:  # entropy-coded data: on to the next marker
                nxt = _NEXT_MARKER.search(packet, i + 1)
                if nxt is None:
                    return found
                i = nxt.start()
                continue
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker == 0xD9:  # EOI: the next picture, if any, starts at its own SOI
                break
            if marker in _STANDALONE:
                i += 2
                continue
            length = int.from_bytes(packet[i + 2 : i + 4], "big")
            if marker in _SOF and i + 9 <= len(packet):
                height = int.from_bytes(packet[i + 5 : i + 7], "big")
                width = int.from_bytes(packet[i + 7 : i + 9], "big")
                # FFmpeg decodes a picture much shorter than the container's frames as one field and doubles it
                if declared_height and height < declared_height * 3 // 4:
                    height *= 2
                found.append(Header(width, height, HELD[MJPEG]))
            if length < 2:
                return found
            i += 2 + length
        i = packet.find(b"\xff\xd8", i)
    return found


# --- H.264 and HEVC: sequence parameter sets, found by their NAL unit type -------------------------------------

_START = re.compile(rb"\x00\x00\x01")


def _nals(packet: bytes, wanted: int, kind: Callable[[int], int], header: int) -> list[bytes]:
    """The payloads (after the NAL header, emulation prevention removed) of the Annex B NAL units of type `wanted`.
    OpenCV hands H.264/HEVC packets over in Annex B (start codes), whatever the container stores."""
    out = []
    for match in _START.finditer(packet):
        start = match.end()
        if start + header < len(packet) and kind(packet[start]) == wanted:
            end = packet.find(b"\x00\x00\x01", start)
            body = packet[start + header : end if end >= 0 else len(packet)][:512]  # the sizes come early
            out.append(body.replace(b"\x00\x00\x03", b"\x00\x00"))
    return out


_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def _h264_sps(nal: bytes) -> Header | None:
    """H.264 7.3.2.1.1: the coded size (macroblocks of 16x16, two fields when not frame-only) and the references."""
    try:
        r = _Bits(nal)
        profile = r.u(8)
        r.u(16)  # constraint flags, level
        r.ue()  # seq_parameter_set_id
        if profile in _HIGH_PROFILES:
            chroma = r.ue()
            if chroma == 3:
                r.u(1)
            r.ue()  # bit depths
            r.ue()
            r.u(1)
            if r.u(1):  # scaling matrices
                for n in range(8 if chroma != 3 else 12):
                    if r.u(1):
                        last = scale = 8
                        for _ in range(16 if n < 6 else 64):
                            if scale:
                                scale = (last + r.se() + 256) % 256
                            last = scale or last
        r.ue()  # log2_max_frame_num_minus4
        poc = r.ue()
        if poc == 0:
            r.ue()
        elif poc == 1:
            r.u(1)
            r.se()
            r.se()
            for _ in range(min(r.ue(), 255)):
                r.se()
        refs = r.ue()
        r.u(1)
        width_mbs = r.ue() + 1
        height_units = r.ue() + 1
        frame_only = r.u(1)
    except IndexError:
        return None
    return Header(width_mbs * 16, height_units * 16 * (2 - frame_only), min(refs, 16) + 1)


def _hevc_sps(nal: bytes) -> Header | None:
    """HEVC 7.3.2.2: the luma size and the decoded picture buffer's size."""
    try:
        r = _Bits(nal)
        r.u(4)
        sub_layers = r.u(3)
        r.u(1)
        r.u(88)  # general profile
        r.u(8)  # general level
        present = [(r.u(1), r.u(1)) for _ in range(sub_layers)]
        if sub_layers:
            r.u(2 * (8 - sub_layers))
        for profile, level in present:
            r.u(88 * profile + 8 * level)
        r.ue()  # sps_seq_parameter_set_id
        if r.ue() == 3:  # chroma_format_idc
            r.u(1)
        width, height = r.ue(), r.ue()
        if r.u(1):  # conformance window
            for _ in range(4):
                r.ue()
        r.ue()  # bit depths
        r.ue()
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
        buffering = 0
        for _ in range(0 if r.u(1) else sub_layers, sub_layers + 1):  # per sub-layer, or the highest only
            buffering = max(buffering, r.ue() + 1)  # sps_max_dec_pic_buffering_minus1
            r.ue()  # reorder pictures
            r.ue()  # latency
    except IndexError:
        return None
    return Header(width, height, min(buffering, 16) + 1)


# --- MPEG-4 Part 2: the video object layer header ---------------------------------------------------------------

_VOL = re.compile(rb"\x00\x00\x01[\x20-\x2f]")


def _mpeg4_vols(packet: bytes) -> list[bytes]:
    return [packet[m.end() : m.end() + 64] for m in _VOL.finditer(packet)]


def _mpeg4_vol(vol: bytes) -> Header | None:
    """ISO/IEC 14496-2 6.2.3: the width and height of a rectangular VOL (other shapes carry none; FFmpeg decodes
    only rectangular ones)."""
    try:
        r = _Bits(vol)
        r.u(9)  # random_accessible_vol, video_object_type_indication
        verid = 1
        if r.u(1):
            verid = r.u(4)
            r.u(3)
        if r.u(4) == 15:  # extended pixel aspect ratio
            r.u(16)
        if r.u(1):  # vol_control_parameters
            r.u(3)
            if r.u(1):  # vbv parameters
                r.u(79)
        shape = r.u(2)
        if shape == 3 and verid != 1:
            r.u(4)
        r.u(1)
        resolution = r.u(16)
        r.u(1)
        if r.u(1):  # fixed_vop_rate
            r.u(max((resolution - 1).bit_length(), 1))
        if shape != 0:
            return None
        r.u(1)
        width = r.u(13)
        r.u(1)
        height = r.u(13)
    except IndexError:
        return None
    return Header(width, height, HELD[MPEG4])


# --- VP8 and VP9: the uncompressed frame header -----------------------------------------------------------------


def _vp8(packet: bytes) -> list[Header]:
    """RFC 6386 9.1: a key frame (bit 0 of the frame tag clear) carries its size after the start code."""
    if len(packet) < 10 or packet[0] & 1 or packet[3:6] != b"\x9d\x01\x2a":
        return []
    width = int.from_bytes(packet[6:8], "little") & 0x3FFF
    height = int.from_bytes(packet[8:10], "little") & 0x3FFF
    return [Header(width, height, HELD[VP8])]


def _vp9_frames(packet: bytes) -> list[bytes]:
    """The frames of a VP9 packet: one, or several in a superframe (its index at the end, Annex B)."""
    if not packet:
        return []
    marker = packet[-1]
    if marker & 0xE0 == 0xC0:
        count, width = (marker & 7) + 1, ((marker >> 3) & 3) + 1
        size = 2 + width * count
        if len(packet) >= size and packet[-size] == marker:
            frames, at = [], 0
            for k in range(count):
                pos = len(packet) - size + 1 + k * width
                length = int.from_bytes(packet[pos : pos + width], "little")
                frames.append(packet[at : at + length])
                at += length
            return frames
    return [packet]


def _vp9(frame: bytes) -> Header | None:
    """VP9 6.2: key and intra-only frames carry their size; an inter frame either takes a reference's (checked when
    that was decoded) or carries its own."""
    try:
        r = _Bits(frame)
        if r.u(2) != 2:
            return None
        profile = r.u(1) | (r.u(1) << 1)
        if profile == 3:
            r.u(1)
        if r.u(1):  # show_existing_frame
            return None
        key = r.u(1) == 0
        show = r.u(1)
        error_resilient = r.u(1)
        if key:
            r.u(24)  # sync code
            _vp9_color(r, profile)
        else:
            intra = r.u(1) if not show else 0
            if not error_resilient:
                r.u(2)
            if intra:
                r.u(24)
                if profile > 0:
                    _vp9_color(r, profile)
                r.u(8)  # refresh_frame_flags
            else:
                r.u(8)
                r.u(12)  # three reference indices and sign biases
                for _ in range(3):
                    if r.u(1):  # found_ref: the size of a reference frame
                        return None
        return Header(r.u(16) + 1, r.u(16) + 1, HELD[VP9])
    except IndexError:
        return None


def _vp9_color(r: _Bits, profile: int) -> None:
    if profile >= 2:
        r.u(1)
    if r.u(3) != 7:  # not RGB
        r.u(1)
        if profile in (1, 3):
            r.u(3)
    elif profile in (1, 3):
        r.u(1)
