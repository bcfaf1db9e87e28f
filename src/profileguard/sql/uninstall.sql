-- Removes every profileguard object; the profile table and the user data stay.
drop trigger if exists profileguard_after_insert on {identity};
drop schema if exists profileguard cascade;
