-- A provider's report (TEMPLATESENDJOBFINISH) finds its delivery by the interface
-- it went through (the app) and the provider's id, never across apps.
DROP INDEX IF EXISTS deliveries_provider_ref_idx;
CREATE INDEX deliveries_provider_ref_idx ON deliveries (interface, provider_ref)
    WHERE provider_ref IS NOT NULL;
