"""Writes the bad-input corpus beside this file (run it to rebuild; the files are committed).

Each file is a CSV (header `user_id,ts,event_type,item_id,price,title`) or JSON-lines event file
with one kind of damage. tests/test_bad_input_corpus.py runs each through the clean stage and holds
the expected counts; the 10 MB single field is made at test time instead of being committed.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = b"user_id,ts,event_type,item_id,price,title\n"


def good(tag: str) -> bytes:
    """Two valid rows whose users are unique to one file, so each file's counts stand alone."""
    return (f"{tag}-a,2020-01-01 10:00:00,view,i1,9.99,Red mug\n"
            f"{tag}-b,2020-01-02 11:30:00,purchase,i2,5.00,Blue pot\n").encode()


CSV_FILES: dict[str, bytes] = {
    # The writer died mid-row: the last record stops inside a quoted field, with no newline.
    "truncated.csv": HEADER + good("t") + b'u3,2020-01-03 09:00:00,cart,i3,1.00,"Green pl',
    # Semicolons where commas were promised: one column per line.
    "wrong_delimiter.csv": b"user_id;ts;event_type;item_id;price;title\n"
                           b"u1;2020-01-01 10:00:00;view;i1;9.99;Red mug\nu2;2020-01-02 11:30:00;purchase;i2;5.00;Blue pot\n",
    # GBK bytes in a file read as UTF-8: the titles are not decodable.
    "wrong_encoding.csv": HEADER + good("e") + "u4,2020-01-04 08:00:00,view,i4,3.50,保温杯\n".encode("gbk"),
    # Bytes that are invalid in every encoding's UTF-8 reading, and NUL bytes inside fields.
    "invalid_utf8_and_nul.csv": HEADER + good("n") + b"u5,2020-01-05 08:00:00,view,i5,1.0,\xff\xfe\xc3\x28\n"
                                + b"u6\x00,2020-01-06 08:00:00,view,i6\x00,1.0,nul\x00title\n",
    # Numbers where strings belong are fine; strings where numbers belong are not.
    "numbers_in_strings.csv": HEADER + b"12345,2020-01-07 08:00:00,view,67890,1.0,42\n"
                              b"u7,2020-01-07 09:00:00,view,i7,twelve,Mug\nu8,2020-01-07 10:00:00,view,i8,1e400,Mug\n",
    # Times no shop ever saw: year 9999, negative and zero years, the epoch itself.
    "impossible_times.csv": HEADER + good("x") + b"u9,9999-12-31 23:59:59,view,i9,1.0,Far future\n"
                            b"u10,-0001-01-01 00:00:00,view,i10,1.0,Before Christ\n"
                            b"u11,0000-00-00 00:00:00,view,i11,1.0,MySQL zero\n"
                            b"u12,1970-01-01 00:00:00,view,i12,1.0,Epoch\n",
    # Two files concatenated: the header again in the middle; and a header that names a column twice.
    "repeated_header.csv": HEADER + good("r") + HEADER + good("r"),
    "duplicate_column_names.csv": b"user_id,ts,event_type,item_id,price,price\n"
                                  b"u1,2020-01-01 10:00:00,view,i1,9.99,1.00\n",
    # A header and nothing else; and no bytes at all.
    "header_only.csv": HEADER,
    "zero_bytes.csv": b"",
    # Markup, script and SQL in text fields must be kept as inert text, never interpreted.
    "hostile_text.csv": HEADER + b'u13,2020-01-08 08:00:00,view,i13,1.0,"<script>alert(\'x\')</script>"\n'
                        b"u14,2020-01-08 09:00:00,search,i14,1.0,\"'; DROP TABLE users; --\"\n"
                        b'u15,2020-01-08 10:00:00,view,"i15"" OR 1=1 --",1.0,<img src=x onerror=alert(1)>\n',
}

# JSON lines: valid events, then deep nesting, broken JSON, arrays and scalars where objects belong.
_DEEP = b'{"user_id":"u20","ts":"2020-02-01 10:00:00","event_type":"view","item_id":"i20","title":' + b"[" * 2000 + b"]" * 2000 + b"}"
JSON_FILES: dict[str, bytes] = {
    "events.json": b'{"user_id":"u16","ts":"2020-02-01 10:00:00","event_type":"view","item_id":"i16","price":"1.5","title":"Mug"}\n'
                   b'{"user_id":17,"ts":"2020-02-01 11:00:00","event_type":"purchase","item_id":17,"price":2,"title":"Pot"}\n'
                   + _DEEP + b"\n"
                   b'{"user_id":"u21","ts":"2020-02-01 12:00:00","event_type":"view","item_id":"i21","price":\n'
                   b'[1,2,3]\n'
                   b'"just a string"\n'
                   b'{"user_id":{"nested":{"deeper":"u22"}},"ts":"2020-02-01 13:00:00","event_type":"view","item_id":"i22"}\n',
}


def main() -> None:
    for name, data in {**CSV_FILES, **JSON_FILES}.items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
