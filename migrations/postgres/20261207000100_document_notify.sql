-- Several instances share one database: each tells the others which documents it changed, so
-- that they push the changes to their own WebSocket clients. A notification goes out when a
-- change of a document's heads commits, carrying the writing instance's token (set on each of
-- its connections as `doorstep.instance`; empty for any other writer) and the case id.
CREATE OR REPLACE FUNCTION doorstep_document_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify(
        'doorstep_documents',
        coalesce(current_setting('doorstep.instance', true), '') || ' ' || NEW.case_id
    );
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER documents_changed
    AFTER UPDATE OF heads ON documents
    FOR EACH ROW
    WHEN (OLD.heads IS DISTINCT FROM NEW.heads)
    EXECUTE FUNCTION doorstep_document_changed();
