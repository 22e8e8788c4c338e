-- The lab's site database (dw_global): journals and their entries, read by lab/web.py.
--
-- The caller creates the database and runs `USE dw_global` first. Everything here is
-- idempotent: tables are created if missing and the seed rows are deterministic (derived from
-- row numbers with CRC32, no RAND), inserted with INSERT IGNORE, so running the file twice leaves
-- the same data. Seeding uses MariaDB's built-in SEQUENCE engine (seq_1_to_N tables) and takes
-- well under a second on the lab machine.
--
-- The seed, which lab/traffic.py relies on:
--   * 2,000 users, userid 1..2000, named user0001..user2000 (SITE_USERS in lab/traffic.py).
--     Every 20th is a community (journaltype C), userids 7, 57, 107 ... are syndicated feeds (Y),
--     the rest are personal journals (P).
--   * 40,000 entries in log2, skewed toward low userids the way popularity is: user0001 has
--     about 900 entries, user2000 about 10. jitemid counts from 1 inside each journal, eventtime
--     grows with the entry number (one every 15 minutes from 2024-01-01), about one entry in ten
--     is private. Bodies are 150-500 bytes.
--
-- No semicolons inside statements or comments: loaders may split the file on them.

CREATE TABLE IF NOT EXISTS user (
    userid      INT UNSIGNED NOT NULL AUTO_INCREMENT,
    user        CHAR(25) NOT NULL,
    name        VARCHAR(80) NOT NULL,
    journaltype CHAR(1) NOT NULL DEFAULT 'P',
    timecreate  DATETIME NOT NULL,
    PRIMARY KEY (userid),
    UNIQUE KEY user (user)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS log2 (
    journalid INT UNSIGNED NOT NULL,
    jitemid   MEDIUMINT UNSIGNED NOT NULL,
    posterid  INT UNSIGNED NOT NULL,
    eventtime DATETIME NOT NULL,
    logtime   DATETIME NOT NULL,
    security  ENUM('public', 'private', 'usemask') NOT NULL DEFAULT 'public',
    subject   VARCHAR(255) NOT NULL DEFAULT '',
    body      TEXT NOT NULL,
    PRIMARY KEY (journalid, jitemid),
    KEY journal_time (journalid, eventtime),
    KEY poster (posterid, journalid),
    KEY logtime (logtime)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- 2,000 users.
INSERT IGNORE INTO user (userid, user, name, journaltype, timecreate)
SELECT
    seq,
    CONCAT('user', LPAD(seq, 4, '0')),
    CONCAT(
        ELT(1 + seq MOD 12, 'Alex', 'Sam', 'Robin', 'Kai', 'Jo', 'Morgan',
            'Ash', 'Rowan', 'Sky', 'Quinn', 'Ari', 'Toni'),
        ' ',
        ELT(1 + (seq DIV 12) MOD 10, 'Fairweather', 'Hollis', 'Marsh', 'Penhallow',
            'Quill', 'Rook', 'Sparrow', 'Thorne', 'Vale', 'Wren')),
    CASE WHEN seq MOD 20 = 0 THEN 'C' WHEN seq MOD 50 = 7 THEN 'Y' ELSE 'P' END,
    TIMESTAMP('2009-04-30 00:00:00') + INTERVAL seq * 7919 MINUTE
FROM seq_1_to_2000;

-- 40,000 entries, numbered inside each journal by ROW_NUMBER.
INSERT IGNORE INTO log2
    (journalid, jitemid, posterid, eventtime, logtime, security, subject, body)
SELECT
    journalid,
    ROW_NUMBER() OVER (PARTITION BY journalid ORDER BY n),
    -- communities get posts from members, everyone else posts to their own journal
    IF(journalid MOD 20 = 0, 1 + CRC32(CONCAT('poster', n)) MOD 2000, journalid),
    TIMESTAMP('2024-01-01 00:00:00') + INTERVAL n * 900 SECOND,
    TIMESTAMP('2024-01-01 00:00:00') + INTERVAL n * 900 + 37 SECOND,
    IF(CRC32(CONCAT('security', n)) MOD 10 = 0, 'private', 'public'),
    CONCAT(
        ELT(1 + n MOD 8, 'Thoughts on', 'A day at', 'Notes about', 'Fic: the return of',
            'Meme:', 'Rambling about', 'Photos from', 'Question about'),
        ' ',
        ELT(1 + (n DIV 8) MOD 10, 'the sea', 'my garden', 'the con', 'winter',
            'the new season', 'old friends', 'the library', 'trains', 'baking', 'the move')),
    LEFT(
        REPEAT(
            CONCAT(
                ELT(1 + n MOD 6,
                    'Today was one of those days where everything happened at once. ',
                    'I finally finished the thing I have been putting off for weeks. ',
                    'Somebody asked me about this in the comments, so here is the long answer. ',
                    'The weather turned, the cat disapproved, and the kettle never stopped. ',
                    'Posting this mostly so I remember it later, feel free to scroll past. ',
                    'Long story short, the plan changed three times before lunch. '),
                ELT(1 + (n DIV 6) MOD 5,
                    'More under the cut, with pictures. ',
                    'Comments are open, as always. ',
                    'Thank you all for the kind notes last time. ',
                    'I will write more about it at the weekend. ',
                    'Anyway, how are you all doing? ')),
            8),
        150 + CRC32(CONCAT('body', n)) MOD 351)
FROM (
    -- squaring a uniform number skews journals toward low userids (the popular ones)
    SELECT
        seq AS n,
        1 + FLOOR(2000 * POW(CRC32(CONCAT('journal', seq)) / 4294967296, 2)) AS journalid
    FROM seq_1_to_40000
) AS entries;
