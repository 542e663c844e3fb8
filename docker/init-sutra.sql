-- Runs once, when the container initialises an empty data directory.
CREATE EXTENSION IF NOT EXISTS sutra;
ALTER DATABASE postgres SET search_path TO "$user", public, sutra;
