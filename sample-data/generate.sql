-- Fills the shop with N orders, N/10 customers, N/4 sessions and 100 products.
-- N comes from a one-row temp table, so the shell can run this file too:
--   sqlite3 shop.sqlite < sample-data/schema.sql
--   sqlite3 -cmd "CREATE TEMP TABLE params(n); INSERT INTO params VALUES (100000);" \
--     shop.sqlite < sample-data/generate.sql
-- The values are deterministic: the same N always gives the same database.
INSERT INTO products (id, sku, name, price)
WITH RECURSIVE p(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM p WHERE i < 100)
SELECT i, printf('SKU-%04d', i), printf('Product %d', i), round(1 + (i * 37 % 500) / 10.0, 2) FROM p;

INSERT INTO customers (id, name, email, created_at)
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < max(1, (SELECT n FROM temp.params) / 10))
SELECT i, printf('Customer %d', i),
       -- One customer in 50 signed up with capitals, as people do (fix.sql).
       printf(CASE WHEN i % 50 = 7 THEN 'Customer%d@Example.COM' ELSE 'customer%d@example.com' END, i),
       date('2024-01-01', printf('+%d days', i % 700)) FROM c;

INSERT INTO orders (id, customer_id, product_id, qty, total, status, created_at)
WITH RECURSIVE o(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM o WHERE i < (SELECT n FROM temp.params)),
     nc(n) AS (SELECT max(1, (SELECT n FROM temp.params) / 10))
SELECT i,
       1 + (i * 7919) % (SELECT n FROM nc),
       1 + (i * 31) % 100,
       1 + i % 5,
       round((1 + i % 5) * (1 + (i * 31 % 100 * 37 % 500) / 10.0), 2),
       CASE i % 10 WHEN 0 THEN 'cancelled' WHEN 1 THEN 'pending' WHEN 2 THEN 'pending' ELSE 'shipped' END,
       datetime('2024-06-01', printf('+%d minutes', i * 7 % 1000000))
FROM o;

INSERT INTO sessions (id, customer_id, token, created_at)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < max(1, (SELECT n FROM temp.params) / 4)),
     nc(n) AS (SELECT max(1, (SELECT n FROM temp.params) / 10))
SELECT i, 1 + (i * 104729) % (SELECT n FROM nc), printf('tok-%08x', i * 2654435761 % 4294967296),
       datetime('2025-06-01', printf('+%d minutes', i * 13 % 800000))
FROM s;
