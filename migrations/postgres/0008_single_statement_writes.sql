-- The token a refresh token replaced. A rotation is one statement (an UPDATE of the old token
-- feeding the INSERT of its successor), so it needs no explicit transaction.
ALTER TABLE refresh_tokens ADD COLUMN rotated_from TEXT;
