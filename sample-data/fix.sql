-- A SQL script: every statement is one step, named by its first line.
UPDATE customers SET email = lower(email) WHERE email <> lower(email);
UPDATE orders SET status = 'archived' WHERE status = 'cancelled' AND created_at < '2025-01-01';
DELETE FROM sessions WHERE created_at < '2025-07-01';
