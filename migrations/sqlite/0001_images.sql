-- One row per image of a collection. `id` is also the image's primary key in Milvus.
CREATE TABLE images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    collection    TEXT    NOT NULL,
    uri           TEXT    NOT NULL,
    content_hash  TEXT,               -- sha256 hex of the bytes; NULL only if the file could not be read
    size_bytes    INTEGER,
    width         INTEGER,
    height        INTEGER,
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'indexed', 'failed')),
    error         TEXT,               -- why a failed image failed
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (collection, uri)
);

CREATE INDEX images_by_uri ON images (uri);
