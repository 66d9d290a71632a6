-- The seed's schema (../shared/seed/chat-backend-spec.md), statement for statement, made
-- idempotent and explicit about utf8mb4_unicode_ci. Applied at every start-up.
-- Valid on MariaDB >= 10.6 and MySQL >= 8.0: CREATE INDEX and ADD COLUMN are written without
-- MariaDB's IF NOT EXISTS; the migrator runs them only when the index or column is missing
-- (chat_server/store/schema_files.py).

-- Usuarios (login por nombre)
CREATE TABLE IF NOT EXISTS usuarios (
    id INT AUTO_INCREMENT PRIMARY KEY,
    username VARCHAR(100) NOT NULL UNIQUE,
    role ENUM('admin','user') DEFAULT 'user',
    estado VARCHAR(50) DEFAULT 'N/D',
    creado_en TIMESTAMP DEFAULT CURRENT_TIMESTAMP
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Chats (general o dm)
CREATE TABLE IF NOT EXISTS chats (
    id INT AUTO_INCREMENT PRIMARY KEY,
    type ENUM('general','dm') NOT NULL,
    name VARCHAR(120),
    creado_en TIMESTAMP DEFAULT CURRENT_TIMESTAMP
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Participantes del chat
CREATE TABLE IF NOT EXISTS chat_participants (
    chat_id INT NOT NULL,
    user_id INT NOT NULL,
    creado_en TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE KEY uniq_chat_user (chat_id, user_id),
    INDEX idx_user (user_id)
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Mensajes v2 (por chat)
CREATE TABLE IF NOT EXISTS mensajes_v2 (
    id INT AUTO_INCREMENT PRIMARY KEY,
    chat_id INT NOT NULL,
    sender_id INT NOT NULL,
    contenido TEXT NOT NULL,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    INDEX idx_chat_time (chat_id, timestamp)
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Chat general (semilla)
-- FROM DUAL: MySQL 8 wants a FROM before WHERE.
INSERT INTO chats (type, name)
SELECT 'general','General' FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM chats WHERE type='general');

-- Esquema anterior (legacy)
CREATE TABLE IF NOT EXISTS mensajes (
    id INT AUTO_INCREMENT PRIMARY KEY,
    usuario VARCHAR(100) NOT NULL,
    mensaje TEXT NOT NULL,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    ip_address VARCHAR(45),
    user_agent TEXT,
    tipo_usuario VARCHAR(20) DEFAULT 'cliente',
    destinatario VARCHAR(100) NULL
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE OR REPLACE VIEW mensajes_recientes AS
SELECT
    id,
    usuario,
    mensaje,
    timestamp,
    DATE_FORMAT(timestamp, '%H:%i:%s') as hora
FROM mensajes
ORDER BY timestamp DESC
LIMIT 50;

CREATE INDEX idx_timestamp ON mensajes(timestamp DESC);
CREATE INDEX idx_usuario ON mensajes(usuario);

-- The seed's quick migrations, for a legacy table made before these columns existed.
ALTER TABLE mensajes ADD COLUMN tipo_usuario VARCHAR(20) DEFAULT 'cliente' AFTER user_agent;
ALTER TABLE mensajes ADD COLUMN destinatario VARCHAR(100) NULL AFTER tipo_usuario;
