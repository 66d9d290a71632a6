-- The embedded store's schema: the same tables, columns and keys as sql/mysql/, in SQLite's
-- dialect.

CREATE TABLE IF NOT EXISTS usuarios (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user')),
    estado TEXT DEFAULT 'N/D',
    creado_en TEXT DEFAULT CURRENT_TIMESTAMP
);
-- One user per name key (chat_server/names.py), as on MySQL; it replaces the index on
-- unikey(username), an emulation of utf8mb4_unicode_ci that disagreed with MariaDB's.
DROP INDEX IF EXISTS uniq_username;
ALTER TABLE usuarios ADD COLUMN name_key TEXT NULL;
CREATE UNIQUE INDEX uniq_name_key ON usuarios (name_key);
-- Names that look alike have one skeleton: a new name may not look like a user's.
ALTER TABLE usuarios ADD COLUMN name_skeleton TEXT NULL;
CREATE INDEX idx_name_skeleton ON usuarios (name_skeleton);

CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL CHECK (type IN ('general', 'dm')),
    name TEXT,
    creado_en TEXT DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS chat_participants (
    chat_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    creado_en TEXT DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (chat_id, user_id)
);
CREATE INDEX IF NOT EXISTS idx_user ON chat_participants (user_id);

CREATE TABLE IF NOT EXISTS mensajes_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    contenido TEXT NOT NULL,
    timestamp TEXT DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_chat_time ON mensajes_v2 (chat_id, timestamp);
CREATE INDEX IF NOT EXISTS idx_chat_id ON mensajes_v2 (chat_id, id);

INSERT INTO chats (type, name)
SELECT 'general', 'General' WHERE NOT EXISTS (SELECT 1 FROM chats WHERE type = 'general');

CREATE TABLE IF NOT EXISTS mensajes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    usuario TEXT NOT NULL,
    mensaje TEXT NOT NULL,
    timestamp TEXT DEFAULT CURRENT_TIMESTAMP,
    ip_address TEXT,
    user_agent TEXT,
    tipo_usuario TEXT DEFAULT 'cliente',
    destinatario TEXT
);
CREATE INDEX IF NOT EXISTS idx_timestamp ON mensajes (timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_usuario ON mensajes (usuario);

CREATE TABLE IF NOT EXISTS dm_pairs (
    user_low INTEGER NOT NULL,
    user_high INTEGER NOT NULL,
    chat_id INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (user_low, user_high)
);

CREATE TABLE IF NOT EXISTS chat_reads (
    chat_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    last_read_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);

-- Each participant's DMs in activity order, with their unread count (see sql/mysql/migrations.sql).
CREATE TABLE IF NOT EXISTS chat_inbox (
    chat_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    last_message_id INTEGER NOT NULL DEFAULT 0,
    unread INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX IF NOT EXISTS idx_inbox_activity ON chat_inbox (user_id, last_message_id, chat_id);

-- Message search (GET /api/search): an FTS5 index over mensajes_v2.contenido (external content:
-- the text is stored once), kept by these triggers; the store fills it once when it is created.
-- unicode61 with remove_diacritics ignores case and accents, as MariaDB's collation does.
CREATE VIRTUAL TABLE IF NOT EXISTS mensajes_fts USING fts5(
    contenido, content='mensajes_v2', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS mensajes_fts_insert AFTER INSERT ON mensajes_v2 BEGIN INSERT INTO mensajes_fts (rowid, contenido) VALUES (new.id, new.contenido); END;
CREATE TRIGGER IF NOT EXISTS mensajes_fts_delete AFTER DELETE ON mensajes_v2 BEGIN INSERT INTO mensajes_fts (mensajes_fts, rowid, contenido) VALUES ('delete', old.id, old.contenido); END;
CREATE TRIGGER IF NOT EXISTS mensajes_fts_update AFTER UPDATE OF contenido ON mensajes_v2 BEGIN INSERT INTO mensajes_fts (mensajes_fts, rowid, contenido) VALUES ('delete', old.id, old.contenido); INSERT INTO mensajes_fts (rowid, contenido) VALUES (new.id, new.contenido); END;

CREATE TABLE IF NOT EXISTS sessions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE INDEX IF NOT EXISTS idx_sessions_user ON sessions (user_id, seq);

CREATE TABLE IF NOT EXISTS login_links (
    id TEXT NOT NULL PRIMARY KEY,
    user_id INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE INDEX IF NOT EXISTS idx_login_links_expiry ON login_links (expires_at);
