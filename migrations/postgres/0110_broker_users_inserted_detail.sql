-- Inserting users no longer bumps the broker's detail version (0107): DescribeBroker's
-- memory compares the broker's generation too, and every user insert into a live broker
-- bumps that generation already, since the broker's agents learn of a new user only
-- through it. The row trigger ran a deferred PL/pgSQL UPDATE of the broker's one version
-- row per inserted user, which cost Postgres about as much as the insert itself, and
-- CreateUser's batches insert many users at once (issue 3 point 4).
--
-- Updates and deletes of users keep the trigger: marking users applied changes what
-- DescribeBroker shows without bumping the generation.
DROP TRIGGER broker_users_detail ON broker_users;
CREATE CONSTRAINT TRIGGER broker_users_detail AFTER UPDATE OR DELETE ON broker_users
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION broker_detail_changed();
