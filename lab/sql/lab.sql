-- The lab's own bookkeeping (not part of Dreamwidth): one row per content import that a lab
-- content-importer worker started. Apply it after `USE dw_lab`.
--
-- status: running      the importer is working on it (its process title is busy)
--         done         it finished and its TheSchwartz job was completed (deleted)
--         failed       it failed; the job got an `error` row and was rescheduled or dropped
--         interrupted  the importer process died while it ran (e.g. the worker-manager was
--                      stopped and KILLed it after 10 s); the job stays grabbed until its lease
--                      (grabbed_until, 12 h for entries, 72 h for comments) runs out
CREATE TABLE IF NOT EXISTS import_run (
        id              BIGINT UNSIGNED PRIMARY KEY NOT NULL AUTO_INCREMENT,
        jobid           BIGINT UNSIGNED NOT NULL,
        host            VARCHAR(64) NOT NULL,
        pid             INT UNSIGNED NOT NULL,
        username        VARCHAR(64) NOT NULL,
        userid          INT UNSIGNED NOT NULL,
        kind            VARCHAR(32) NOT NULL,
        planned_seconds DOUBLE NOT NULL,
        started_at      DATETIME(3) NOT NULL,
        finished_at     DATETIME(3) NULL,
        status          ENUM('running','done','interrupted','failed') NOT NULL DEFAULT 'running',
        detail          VARCHAR(255) NULL,
        INDEX (status),
        INDEX (host, pid, status),
        INDEX (jobid)
);
