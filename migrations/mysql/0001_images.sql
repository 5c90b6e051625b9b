-- One row per image of a collection. `id` is also the image's primary key in Milvus.
-- The same table as migrations/sqlite, for MySQL 8 and MariaDB 10.5+. Differences, and why:
-- * binary collation: URIs and collection names compare case- and accent-sensitively, as files
--   and object keys do (MySQL's default collation would make /A.jpg and /a.jpg one image);
-- * uniqueness over a SHA-256 of the URI (a generated column): InnoDB cannot index a whole
--   TEXT column, and a URI may be up to 4096 bytes;
-- * the URI index is on a prefix, for lookups by URI.
CREATE TABLE images (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    collection    VARCHAR(255) NOT NULL,
    uri           TEXT         NOT NULL,
    uri_key       BINARY(32)   AS (UNHEX(SHA2(uri, 256))) STORED,
    content_hash  VARCHAR(64),          -- sha256 hex of the bytes; NULL only if the file could not be read
    size_bytes    BIGINT,
    width         BIGINT,
    height        BIGINT,
    status        VARCHAR(16)  NOT NULL CHECK (status IN ('pending', 'indexed', 'failed')),
    error         TEXT,                 -- why a failed image failed
    created_at_ms BIGINT       NOT NULL,
    updated_at_ms BIGINT       NOT NULL,
    UNIQUE KEY images_by_collection_uri (collection, uri_key),
    KEY images_by_uri (uri(255))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
