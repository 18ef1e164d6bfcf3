-- Delivery of the outbox through Kafka, and wake-ups instead of polling.
-- What each consumer group has handled, by outbox id: a message delivered
-- twice (the relay died between publishing and marking, or a consumer died
-- before its offset was committed) is handled once.
CREATE TABLE stream_processed (
    consumer_group text NOT NULL,
    message_id     bigint NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, message_id)
);

-- The relay and in-process consumers LISTEN on this channel; the trigger is
-- per statement so a batch of bookings wakes them once.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('evently_outbox', '');
  RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
  FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Mail sent per message and recipient: a message handled again (a retry after
-- some recipients were mailed) mails nobody twice.
CREATE TABLE sent_emails (
    message_id bigint NOT NULL,
    user_id    bigint NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id)
);
