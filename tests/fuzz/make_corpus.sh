#!/bin/bash
# Regenerates the seed corpus tests/fuzz/corpus/<target>/ from the WAL-E
# fixture (tests/fixtures/wale-pg15-a) plus a few hand-made documents.
# Needs lzop, python3 and build/fuzz/fuzz_tar_index (make fuzz).  Seeds are
# kept small (the whole corpus well under 200 KB): the fuzzer grows them.
set -euo pipefail
cd "$(dirname "$0")/../.."
FIX=tests/fixtures/wale-pg15-a/pgdb
BK=$FIX/basebackups_005/base_000000010000000000000002_00000040
OUT=tests/fuzz/corpus
TMP=$(mktemp -d /tmp/walfs-corpus.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
rm -rf "$OUT"
mkdir -p "$OUT"/{lzop,tar_index,index_json,s3_xml,sentinel}

# --- lzop: real WAL-E objects, and lzop 1.04's variants of a WAL head ---
cp "$FIX/wal_005/000000010000000000000002.00000028.backup.lzo" "$OUT/lzop/wal_backup_label.lzo"
cp "$BK/tar_partitions/part_00000001.tar.lzo" "$OUT/lzop/part_00000001.tar.lzo"
lzop -dc "$FIX/wal_005/000000010000000000000002.lzo" >"$TMP/wal"
head -c 300000 "$TMP/wal" >"$TMP/walhead"
head -c 9000 "$TMP/wal" >"$TMP/walhead9k"
lzop -1 -c <"$TMP/walhead" >"$OUT/lzop/wal_head_2blocks.lzo"             # as WAL-E writes
lzop -9 -c <"$TMP/walhead9k" >"$OUT/lzop/wal_head_lzo1x999.lzo"
lzop -1 -c --crc32 <"$TMP/walhead9k" >"$OUT/lzop/wal_head_crc32.lzo"
lzop -1 -c -F <"$TMP/walhead9k" >"$OUT/lzop/wal_head_nochecksum.lzo"
(cd "$TMP" && lzop -1 -c walhead9k) >"$OUT/lzop/wal_head_named.lzo"     # stores name and mode
python3 -c "import random, sys; random.seed(10); sys.stdout.buffer.write(random.randbytes(5000))" >"$TMP/random"
lzop -1 -c <"$TMP/random" >"$OUT/lzop/incompressible.lzo"                # stored raw
lzop -1 -c </dev/null >"$OUT/lzop/empty.lzo"

# --- tar_index: mode byte, block byte, tar streams (see fuzz_tar_index.c) ---
lzop -dc "$BK/tar_partitions/part_00000001.tar.lzo" >"$TMP/p1.tar"
lzop -dc "$BK/tar_partitions/part_00000000.tar.lzo" >"$TMP/p0.tar"
python3 - "$TMP" <<'EOF'
import io, sys, tarfile
tmp = sys.argv[1]
# The first members of the real partition that are small: directories,
# PG_VERSION, postgresql.auto.conf, pg_filenode.map..., cut as byte ranges
# so WAL-E's own headers are kept as they are.
raw = open(tmp + "/p0.tar", "rb").read()
out = bytearray()
with tarfile.open(tmp + "/p0.tar") as t:
    for m in t:
        if m.size <= 600 and len(out) < 12000:
            end = m.offset_data + ((m.size + 511) // 512) * 512
            out += raw[m.offset:end]
out += bytes(1024)
open(tmp + "/small.tar", "wb").write(out)
# Every member type walfs maps, long names (GNU and pax), a pax mtime.
def add(t, name, typ, data=b"", **kw):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.size = len(data)
    ti.mode = 0o600
    ti.mtime = 1764088920
    for k, v in kw.items():
        setattr(ti, k, v)
    t.addfile(ti, io.BytesIO(data) if data else None)
for fmt, name in ((tarfile.GNU_FORMAT, "types_gnu.tar"), (tarfile.PAX_FORMAT, "types_pax.tar")):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as t:
        add(t, "d", tarfile.DIRTYPE)
        add(t, "d/f", tarfile.REGTYPE, b"hello\n")
        add(t, "d/" + "x" * 150, tarfile.REGTYPE, b"long")
        add(t, "d/sym", tarfile.SYMTYPE, linkname="f")
        add(t, "d/hard", tarfile.LNKTYPE, linkname="d/f")
        add(t, "d/fifo", tarfile.FIFOTYPE)
        add(t, "d/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add(t, "d/blk", tarfile.BLKTYPE, devmajor=8, devminor=0)
        add(t, "./d/../escape", tarfile.REGTYPE, b"x")
        if fmt == tarfile.PAX_FORMAT:
            ti = tarfile.TarInfo("d/pax")
            ti.size = 3
            ti.pax_headers = {"mtime": "1764088920.123456789", "path": "d/pax_long_" + "y" * 120}
            t.addfile(ti, io.BytesIO(b"pax"))
    v = b.getvalue().rstrip(b"\0")
    v += bytes(-len(v) % 512 + 1024)
    open(tmp + "/" + name, "wb").write(v)
EOF
SEP=$'WALFSPART\n'
seed() { local name=$1 mode=$2 block=$3; shift 3; { printf "\\x$mode\\x$block"; cat "$@"; } >"$OUT/tar_index/$name"; }
seed p1_wale_blocks 00 00 "$TMP/p1.tar"
seed p1_512_blocks 00 01 "$TMP/p1.tar"
seed small_wale_blocks 00 00 "$TMP/small.tar"
seed small_1k_blocks 00 02 "$TMP/small.tar"
seed types_gnu 00 00 "$TMP/types_gnu.tar"
seed types_pax_512_blocks 00 01 "$TMP/types_pax.tar"
{ cat "$TMP/small.tar"; printf '%s' "$SEP"; cat "$TMP/p1.tar"; } >"$TMP/two"
seed two_partitions 00 03 "$TMP/two"
seed p1_lzop 01 00 "$BK/tar_partitions/part_00000001.tar.lzo"
lzop -1 -c <"$TMP/small.tar" >"$TMP/small.tar.lzo"
seed small_lzop 01 00 "$TMP/small.tar.lzo"
lzop -1 -c <"$TMP/types_pax.tar" >"$TMP/types_pax.tar.lzo"
seed types_pax_lzop 01 00 "$TMP/types_pax.tar.lzo"

# --- index_json: walfs's own indexes of those tars, without the sha256
#     tail (the harness seals them), and one whole ---
for s in small_1k_blocks types_gnu types_pax_512_blocks two_partitions; do
    WALFS_FUZZ_DUMP_INDEX="$TMP/$s.json" build/fuzz/fuzz_tar_index "$OUT/tar_index/$s" >/dev/null 2>&1
    python3 - "$TMP/$s.json" "$OUT/index_json/$s" <<'EOF'
import sys
j = open(sys.argv[1], "rb").read().rstrip()
cut = j.rindex(b',"sha256":"')
open(sys.argv[2], "wb").write(j[:cut])
EOF
done
cp "$TMP/types_gnu.json" "$OUT/index_json/types_gnu_sealed"

# --- sentinel ---
cp "$FIX/basebackups_005/base_000000010000000000000002_00000040_backup_stop_sentinel.json" \
    "$OUT/sentinel/wale_pg15.json"
printf '%s' '{"wal_segment_backup_stop": "0000000100000000000000FF", "wal_segment_offset_backup_stop": "00FFFFFF", "expanded_size_bytes": 99999999999999999999, "spec": {"base_prefix": "/d\u00e9/", "tablespaces": [{"loc": "/t", "link": "16384"}]}}' \
    >"$OUT/sentinel/big_values.json"
printf '%s' '{"wal_segment_backup_stop": 5, "expanded_size_bytes": "12", "wal_segment_offset_backup_stop": null}' \
    >"$OUT/sentinel/wrong_types.json"

# --- s3_xml: one of each response walfs reads ---
NS='xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
cat >"$OUT/s3_xml/list_truncated.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult $NS><Name>b</Name><Prefix>pgdb/wal_005/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated><NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken><Contents><Key>pgdb/wal_005/000000010000000000000001.lzo</Key><LastModified>2026-11-25T16:42:00.000Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>2485408</Size><StorageClass>STANDARD</StorageClass></Contents><CommonPrefixes><Prefix>pgdb/wal_005/sub/</Prefix></CommonPrefixes></ListBucketResult>
EOF
cat >"$OUT/s3_xml/list_last_page.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult $NS><Name>b</Name><Prefix>pgdb/</Prefix><IsTruncated>false</IsTruncated><Contents><Key><![CDATA[pgdb/a&b]]></Key><LastModified>2026-11-25T16:42:00Z</LastModified><ETag>"e-2"</ETag><Size>0</Size></Contents></ListBucketResult>
EOF
cat >"$OUT/s3_xml/error.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.
second line</Message><Key>pgdb/x</Key><RequestId>tx0000</RequestId><HostId>h</HostId></Error>
EOF
cat >"$OUT/s3_xml/initiate_multipart.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult $NS><Bucket>b</Bucket><Key>pgdb/k</Key><UploadId>2~iCw_lDY8VoLmRL3zRBXLTkvRaGHSVoG</UploadId></InitiateMultipartUploadResult>
EOF
cat >"$OUT/s3_xml/list_uploads.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult $NS><Bucket>b</Bucket><IsTruncated>false</IsTruncated><Upload><Key>pgdb/basebackups_005/x</Key><UploadId>2~abc</UploadId><Initiated>2026-11-25T16:42:00.000Z</Initiated></Upload><Upload><Key>k2</Key><UploadId>id2</UploadId></Upload></ListMultipartUploadsResult>
EOF
printf '%s' '<?xml version="1.0" encoding="ISO-8859-1"?><Error><Code>&#65;&lt;&amp;</Code><Message>caf'$'\xe9''</Message></Error>' \
    >"$OUT/s3_xml/error_latin1.xml"
du -sb "$OUT"/* "$OUT"
