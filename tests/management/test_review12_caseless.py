"""Review of c6ab168: a substring term of ASCII without a letter is matched
on the stored text (``col LIKE '%term%'``) instead of
``lower(col) LIKE lower('%term%')``.  Equivalent on both backends when the
database's ``lower()`` maps no character but an ASCII non-letter to a text
holding an ASCII non-letter, and leaves those unchanged: checked here over
every code point with the database's own ``lower()`` (PostgreSQL under the
database's default collation, SQLite's ASCII-only one), then the filter
itself against the old expression over crafted texts and terms (LIKE
wildcards, the escape character, 'İ', 'ß', the Kelvin sign, ...)."""

from __future__ import annotations

import itertools

import sqlalchemy as sa

from nbgateway.management.store import _accesslog_query as q

#: ASCII characters without a letter (what a caseless term is made of)
_NON_LETTERS = "".join(chr(i) for i in range(1, 128) if not chr(i).isalpha())
_RE_CLASS = r"[\x01-\x40\x5b-\x60\x7b-\x7f]"


def _engine(db_dsn: str) -> sa.Engine:
    return sa.create_engine(db_dsn.replace("postgresql://", "postgresql+psycopg://", 1))


def test_database_lower_never_makes_an_ascii_non_letter(db_dsn):
    engine = _engine(db_dsn)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # the database's default collation, and the ICU/libc ones a
                # deployment's database could have as its default
                colls = ["default", *conn.execute(sa.text(
                    "SELECT collname FROM pg_collation WHERE collname IN "
                    "('und-x-icu', 'tr-x-icu', 'de-x-icu', 'C.utf8', 'en_US.utf8', 'tr_TR.utf8')"
                    " AND collencoding IN (-1, pg_char_to_encoding('UTF8'))")).scalars()]
                bad = []
                for coll in colls:
                    low = f'lower(chr(i) COLLATE "{coll}")'
                    bad += [(coll, i) for i in conn.execute(sa.text(
                        "SELECT i FROM generate_series(1, 1114111) i "
                        "WHERE i NOT BETWEEN 55296 AND 57343 AND ("
                        f" (i < 128 AND chr(i) !~ '[A-Za-z]' AND {low} <> chr(i))"
                        f" OR ((i >= 128 OR chr(i) ~ '[A-Za-z]') AND {low} ~ :cls))"
                        " LIMIT 20"), {"cls": _RE_CLASS}).scalars()]
                assert len(colls) > 1  # an ICU collation was checked too
            else:
                # SQLite's lower() folds ASCII only: every other code point is unchanged
                bad = conn.execute(sa.text(
                    "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s "
                    "WHERE i < 1114111) SELECT i FROM s WHERE i NOT BETWEEN 55296 AND 57343 "
                    "AND (i NOT BETWEEN 65 AND 90) AND lower(char(i)) <> char(i) LIMIT 20"
                )).scalars().all()
    finally:
        engine.dispose()
    assert bad == []


_TEXTS = [
    "/api/42", "/API/42", "/a%b_c\\d", "/a%b", "/axb_c", "/100%", "/100x", "/x_1", "/xa1",
    "İ1.2", "i̇1.2", "ß-3", "SS-3", "\u212a/7", "k/7", "/é_é", "/\u00c9_\u00c9", "1.2.3.4",
    "1x2x3x4", "\\\\", "\\", "%", "_", "", "ǅ9", "ǆ9", "\u0130\u0130", "Ⅻ-12", "ⅻ-12",
    "/ǰ̌/0", "\ufb00-0", "ﬃ", "\u03a3/\u03c2/", "x\u0307.1",
]
_TERMS = ["42", "/4", "%", "_", "\\", "\\\\", "1_", "%1", "1.2", "-3", "/7", "-", "/",
          "100%", "/_", "_\\", ".", "", " ", "/0", "\\\\", "%_", "9", "-12", "/."]


def test_caseless_filter_answers_as_lower_like(db_dsn):
    engine = _engine(db_dsn)
    t = sa.Table("review12_texts", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("v", sa.Text))
    texts = _TEXTS + ["".join(p) for p in itertools.product(("İ", "1", "%", "_", "\\"), repeat=3)]
    try:
        t.create(engine)
        with engine.begin() as conn:
            conn.execute(t.insert(), [{"id": i, "v": v} for i, v in enumerate(texts)]
                         + [{"id": len(texts), "v": None}])
            for term in _TERMS:
                assert q._caseless(term), term
                new = set(conn.execute(sa.select(t.c.id).where(q._contains(t.c.v, term)))
                          .scalars())
                old = set(conn.execute(sa.select(t.c.id).where(
                    sa.func.lower(t.c.v).like(q._like(term), escape="\\"))).scalars())
                assert new == old, (term, sorted(texts[i] for i in new ^ old))
                assert new == {i for i, v in enumerate(texts) if term in v}, term
    finally:
        t.drop(engine, checkfirst=True)
        engine.dispose()
