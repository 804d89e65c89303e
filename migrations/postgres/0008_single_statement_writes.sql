-- The token a refresh token replaced. A rotation is one statement (an UPDATE of the old token
-- feeding the INSERT of its successor), so it needs no explicit transaction.
ALTER TABLE refresh_tokens ADD COLUMN rotated_from TEXT;

-- Nothing read refresh tokens by session; ending a user's offline grants reads them by user.
DROP INDEX refresh_tokens_by_session;
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);
