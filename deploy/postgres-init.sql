-- The ledger and request registry live in their own database, with their own user.
CREATE USER ledger WITH PASSWORD 'ledger';
CREATE DATABASE ledger OWNER ledger;
