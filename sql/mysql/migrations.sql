-- chat_server's own additions. Every seed table and column stays as it is; these only add.
-- Add an index or a column with the plain `CREATE INDEX name ON t (...)` or
-- `ALTER TABLE t ADD COLUMN c ...` (one per statement): the migrator runs it only when the
-- database lacks it (chat_server/store/schema_files.py), on MariaDB and on MySQL 8 alike.

-- Exactly one DM per pair of users, also under concurrent requests: the seed's tables cannot
-- say so, this primary key can. user_low < user_high.
CREATE TABLE IF NOT EXISTS dm_pairs (
    user_low INT NOT NULL,
    user_high INT NOT NULL,
    chat_id INT NOT NULL,
    PRIMARY KEY (user_low, user_high),
    UNIQUE KEY uniq_dm_chat (chat_id)
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- DMs made before dm_pairs existed (the oldest chat of a pair wins).
INSERT IGNORE INTO dm_pairs (user_low, user_high, chat_id)
SELECT LEAST(a.user_id, b.user_id), GREATEST(a.user_id, b.user_id), MIN(c.id)
FROM chats c
JOIN chat_participants a ON a.chat_id = c.id
JOIN chat_participants b ON b.chat_id = c.id AND a.user_id < b.user_id
WHERE c.type = 'dm'
GROUP BY LEAST(a.user_id, b.user_id), GREATEST(a.user_id, b.user_id);

-- History pages, polling (after_id) and stream replay all read "chat_id = ? AND id > ?" in id order.
CREATE INDEX idx_chat_id ON mensajes_v2 (chat_id, id);

-- How far each user has read each chat (POST /api/chats/{id}/read). A marker only moves forward;
-- a missing row means nothing read yet. Unread counts read mensajes_v2 through idx_chat_id from it.
CREATE TABLE IF NOT EXISTS chat_reads (
    chat_id INT NOT NULL,
    user_id INT NOT NULL,
    last_read_id INT NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- usuarios.name_key, the one notion of "same name" on every store (chat_server/names.py), and
-- name_skeleton are added by MysqlStore._name_keys in one ALTER TABLE together with the change
-- of username's collation: one table rebuild rather than five, on every new database.

-- Each participant's DMs in activity order, with their unread count: a page of GET /api/chats is
-- one range of idx_inbox_activity, whatever the number of chats. Kept in the same transaction as
-- each message insert (Store.insert_messages) and each read marker (Store.mark_read). General
-- has no rows here: it is everyone's, and a row per user would make each of its messages cost
-- O(users).
CREATE TABLE IF NOT EXISTS chat_inbox (
    chat_id INT NOT NULL,
    user_id INT NOT NULL,
    last_message_id INT NOT NULL DEFAULT 0,
    unread INT NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id),
    INDEX idx_inbox_activity (user_id, last_message_id, chat_id)
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Message search (GET /api/search): InnoDB's full-text index with its default parser (words
-- between spaces and punctuation; docs/design.md says why not ngram).
ALTER TABLE mensajes_v2 ADD FULLTEXT INDEX ft_contenido (contenido);

-- Login sessions: a token names one (chat_server/sessions.py). `id` is an HMAC of the token, never
-- the token; times are Unix seconds. Ended and expired rows stay (at most 50 per user): a user with
-- any row has claimed their name. Lookups are by id; a user's rows, newest first (seq), by
-- idx_sessions_user.
CREATE TABLE IF NOT EXISTS sessions (
    seq BIGINT AUTO_INCREMENT PRIMARY KEY,
    id CHAR(64) NOT NULL,
    user_id INT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT NULL,
    UNIQUE KEY uniq_session_id (id),
    INDEX idx_sessions_user (user_id, seq)
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One-time login links the admin makes for a user (POST /api/users/{id}/login-link): `id` is an
-- HMAC of the link's code; `used_at` is set by the one login that uses it.
CREATE TABLE IF NOT EXISTS login_links (
    id CHAR(64) NOT NULL PRIMARY KEY,
    user_id INT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NULL,
    INDEX idx_login_links_expiry (expires_at)
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
