"""Image records on disk: ArrayRecord files (random access, no TensorFlow) and a one-time
converter from the FFHQ / CelebA-HQ TFRecords of the reference.

The reference reads FFHQ / CelebA-HQ from TFRecords written by the StyleGAN / PGGAN
``dataset_tool`` (``tf.train.Example`` with features ``shape`` int64[3] = (C, H, W) and ``data``
bytes, uint8 in CHW order). A TFRecord file is sequential: resuming at step s re-reads every
record up to s (about 64M records at step 1M of ffhq_256) and reading needs TensorFlow.
``python -m score_jax.records convert`` rewrites them once as ArrayRecord, which
``config.data.tfrecords_path=OUT.array_record`` (or ``data.dataset="ARRAYRECORD"``) then reads by
index: a resume costs nothing, and no TensorFlow is needed. The TFRecord container and the
``Example`` protobuf are read here in plain Python (the TFRecord format: a little-endian uint64
length, its masked CRC-32C, the data, its masked CRC-32C; tensorflow ``core/lib/io/record_writer``).

One ArrayRecord record = one image: a 16-byte header ``<iiii`` (H, W, C, label) and the uint8
pixels in HWC order (`encode_image_record` / `decode_image_record`).

    python -m score_jax.records convert --tfrecords 'ffhq/ffhq-r08.tfrecords' \\
        --out /data/ffhq_256.array_record
"""
from __future__ import annotations

import glob
import os
import struct
import sys
from collections.abc import Iterable, Iterator

import numpy as np

from score_jax.cli_args import ArgumentParser

HEADER = struct.Struct("<iiii")  # height, width, channels, label
ARRAY_RECORD_SUFFIX = ".array_record"


# ----------------------------------------------------------------------------------------------
# The image record of our ArrayRecord files
# ----------------------------------------------------------------------------------------------
def encode_image_record(image: np.ndarray, label: int = 0) -> bytes:
    """One image (H, W, C) uint8 (or (H, W): one channel) and its label -> record bytes."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255); got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"an image has shape (H, W, C) or (H, W); got {image.shape}")
    h, w, c = image.shape
    return HEADER.pack(h, w, c, int(label)) + np.ascontiguousarray(image).tobytes()


def decode_image_record(record: bytes) -> tuple[np.ndarray, int]:
    """Record bytes -> (image (H, W, C) uint8, label): the inverse of `encode_image_record`."""
    h, w, c, label = HEADER.unpack_from(record)
    image = np.frombuffer(record, np.uint8, count=h * w * c, offset=HEADER.size)
    return image.reshape(h, w, c), label


def write_array_record(path: str, images: Iterable[np.ndarray], labels: Iterable[int] | None = None
                       ) -> int:
    """Write ``images`` (each (H, W, C) uint8) with ``labels`` (default 0) to one ArrayRecord
    file, ``group_size:1`` (every record is its own chunk: the fastest random access). Returns
    the number of records written.

    The records go to a hidden temporary file in the same folder (``.<name>.tmp-<pid>``: no
    ``*.array_record*`` glob matches it), renamed over ``path`` only when every record is
    written; on any error the temporary file is removed, so a failed run leaves no partial
    ``path`` (an existing ``path`` is kept)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    writer = ArrayRecordWriter(tmp, "group_size:1")
    n = 0
    try:
        try:
            labels_it = iter(labels) if labels is not None else None
            for image in images:
                label = 0 if labels_it is None else int(next(labels_it))
                writer.write(encode_image_record(image, label))
                n += 1
        finally:
            writer.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return n


def array_record_files(pattern: str) -> list[str]:
    """The sorted files of a path, glob, or folder (its ``*.array_record*`` files).

    Raises ValueError when nothing matches."""
    if os.path.isdir(pattern):
        files = sorted(glob.glob(os.path.join(pattern, f"*{ARRAY_RECORD_SUFFIX}*")))
    else:
        files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"{pattern!r} matches no ArrayRecord file (a file, a glob, or a folder "
                         f"of *{ARRAY_RECORD_SUFFIX} files; `python -m score_jax.records convert` "
                         f"writes them)")
    return files


# ----------------------------------------------------------------------------------------------
# TFRecord container + tf.train.Example, in plain Python
# ----------------------------------------------------------------------------------------------
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data`` (pure Python: ~1 MB/s; used for headers and tests)."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` mod 2^32."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecord(path: str, *, verify_data: bool = False) -> Iterator[bytes]:
    """The records of one TFRecord file, in order. The length's CRC is always checked (cheap);
    the data's CRC when ``verify_data`` (pure-Python CRC: slow for large files).

    Raises ValueError naming the file and offset of a truncated or corrupt record."""
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise ValueError(f"{path}: truncated record header at byte {offset}")
            (length,), (crc,) = struct.unpack("<Q", head[:8]), struct.unpack("<I", head[8:])
            if masked_crc32c(head[:8]) != crc:
                raise ValueError(f"{path}: corrupt record length at byte {offset}")
            data, tail = f.read(length), f.read(4)
            if len(data) < length or len(tail) < 4:
                raise ValueError(f"{path}: truncated record at byte {offset}")
            if verify_data and masked_crc32c(data) != struct.unpack("<I", tail)[0]:
                raise ValueError(f"{path}: corrupt record data at byte {offset}")
            yield data


def write_tfrecord(path: str, records: Iterable[bytes]) -> int:
    """Write ``records`` as a TFRecord file (the format ``tf.io.TFRecordWriter`` writes)."""
    n = 0
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc32c(length)) + data
                    + struct.pack("<I", masked_crc32c(data)))
            n += 1
    return n


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message: varints as int, length-delimited
    as bytes, fixed32 / fixed64 as raw bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, value


def parse_example(record: bytes) -> dict[str, list]:
    """A serialised ``tf.train.Example`` -> ``{name: values}``: bytes features as a list of
    bytes, int64 features as a list of int, float features as a list of float
    (tensorflow ``core/example/{example,feature}.proto``)."""
    out = {}
    for num, _, features in _fields(record):  # Example.features = 1
        if num != 1:
            continue
        for fnum, _, entry in _fields(features):  # Features.feature = 1 (map entries)
            if fnum != 1:
                continue
            name, feature = "", b""
            for enum, _, v in _fields(entry):
                if enum == 1:
                    name = v.decode()
                elif enum == 2:
                    feature = v
            out[name] = _feature_values(feature)
    return out


def _feature_values(feature: bytes) -> list:
    values: list = []
    for kind, _, lst in _fields(feature):  # 1 bytes_list, 2 float_list, 3 int64_list
        for vnum, wire, v in _fields(lst):
            if vnum != 1:
                continue
            if kind == 1:
                values.append(bytes(v))
            elif kind == 2:
                values += (list(struct.unpack(f"<{len(v) // 4}f", v)) if wire == 2
                           else [struct.unpack("<f", v)[0]])
            elif kind == 3:
                if wire == 2:  # packed
                    j = 0
                    while j < len(v):
                        x, j = _varint(v, j)
                        values.append(x - (1 << 64) if x >= 1 << 63 else x)
                else:
                    values.append(v - (1 << 64) if v >= 1 << 63 else v)
    return values


def _key(num: int, wire: int) -> bytes:
    return _encode_varint(num << 3 | wire)


def _encode_varint(x: int) -> bytes:
    out = bytearray()
    x &= (1 << 64) - 1
    while True:
        b = x & 0x7F
        x >>= 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def _delimited(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _encode_varint(len(payload)) + payload


def encode_example(features: dict[str, list]) -> bytes:
    """``{name: list of bytes | list of int}`` -> a serialised ``tf.train.Example`` (what
    ``tf.train.Example(...).SerializeToString()`` writes for these features; int64 lists packed)."""
    entries = b""
    for name, values in features.items():
        if all(isinstance(v, bytes) for v in values):
            lst = b"".join(_delimited(1, v) for v in values)
            feature = _delimited(1, lst)
        elif all(isinstance(v, (int, np.integer)) for v in values):
            packed = b"".join(_encode_varint(int(v)) for v in values)
            feature = _delimited(3, _delimited(1, packed))
        else:
            raise ValueError(f"feature {name!r}: values must be all bytes or all int")
        entries += _delimited(1, _delimited(1, name.encode()) + _delimited(2, feature))
    return _delimited(1, entries)


def stylegan_example_image(record: bytes) -> np.ndarray:
    """A StyleGAN / PGGAN dataset_tool record (``shape`` (C, H, W), ``data`` uint8 CHW) ->
    the image (H, W, C) uint8 (the reference's ``tf.transpose(x, (1, 2, 0))``)."""
    ex = parse_example(record)
    if "shape" not in ex or "data" not in ex:
        raise ValueError(f"a StyleGAN TFRecord example has features 'shape' and 'data'; got "
                         f"{sorted(ex)}")
    c, h, w = (int(v) for v in ex["shape"])
    x = np.frombuffer(ex["data"][0], np.uint8)
    if x.size != c * h * w:
        raise ValueError(f"record data has {x.size} bytes, shape {(c, h, w)} needs {c * h * w}")
    return x.reshape(c, h, w).transpose(1, 2, 0)


# ----------------------------------------------------------------------------------------------
# The converter
# ----------------------------------------------------------------------------------------------
def convert_tfrecords(pattern: str, out: str, *, num_shards: int = 1,
                      max_records: int | None = None, verify_data: bool = False) -> list[str]:
    """Rewrite the StyleGAN / PGGAN TFRecords matching ``pattern`` as ArrayRecord.

    Records keep the order of the sorted input files. With ``num_shards > 1`` the outputs are
    ``<out>-0000i-of-0000n`` holding contiguous runs (shard i gets records
    ``[N i / n, N (i + 1) / n)``). Returns the written files.

    A failed conversion (a corrupt or truncated record, an unreadable file) leaves no output:
    each file is written under a temporary name and renamed when complete
    (`write_array_record`), and the shards already written are removed.

    Raises ValueError when nothing matches ``pattern``, ``num_shards < 1``, or a record is
    corrupt (`read_tfrecord`, `stylegan_example_image`)."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"--tfrecords={pattern!r} matches no file")
    if int(num_shards) < 1:
        raise ValueError(f"--num_shards={num_shards} must be >= 1")

    def records():
        n = 0
        for path in files:
            for rec in read_tfrecord(path, verify_data=verify_data):
                if max_records is not None and n >= max_records:
                    return
                yield rec
                n += 1

    if num_shards == 1:
        write_array_record(out, (stylegan_example_image(r) for r in records()))
        return [out]
    total = sum(1 for _ in records())  # a header-only pass (no decoding) to size the shards
    outs, it = [], iter(records())
    try:
        for i in range(num_shards):
            lo, hi = total * i // num_shards, total * (i + 1) // num_shards
            path = f"{out}-{i:05d}-of-{num_shards:05d}"
            write_array_record(path, (stylegan_example_image(next(it)) for _ in range(hi - lo)))
            outs.append(path)
    except BaseException:  # no partial set of shards: remove the ones this call wrote
        for path in outs:
            os.remove(path)
        raise
    return outs


def main(argv: list[str] | None = None) -> int:
    """``python -m score_jax.records convert --tfrecords PATTERN --out FILE.array_record``."""
    parser = ArgumentParser(prog="python -m score_jax.records",
                                     description="TFRecord -> ArrayRecord, once (no TensorFlow).")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="StyleGAN/PGGAN TFRecords (FFHQ, CelebA-HQ) -> "
                                          "ArrayRecord")
    conv.add_argument("--tfrecords", required=True, help="file or glob of .tfrecords")
    conv.add_argument("--out", required=True, help="output .array_record file (or shard prefix)")
    conv.add_argument("--num_shards", type=int, default=1)
    conv.add_argument("--max_records", type=int, default=None)
    conv.add_argument("--verify", action="store_true", help="check every record's CRC (slow)")
    args = parser.parse_args(argv)
    try:
        outs = convert_tfrecords(args.tfrecords, args.out, num_shards=args.num_shards,
                                 max_records=args.max_records, verify_data=args.verify)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    n = len(ArrayRecordDataSource(outs))
    print(f"wrote {n} records to {', '.join(outs)}; train on them with "
          f"--config.data.tfrecords_path={outs[0] if len(outs) == 1 else args.out + '-*'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
