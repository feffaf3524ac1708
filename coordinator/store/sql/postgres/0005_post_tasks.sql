-- Version 5 (PostgreSQL only): post tasks, what one coordinator asks the owner of a shard to do
-- about a post (coordinator/store/base.py: PostTask), e.g. create the jobs of the post's targets
-- in that shard. Inserted by any coordinator (with NOTIFY postroom_post_tasks, the shard as the
-- payload), deleted by the shard's owner once done, under its fence. args is JSON text. No
-- foreign key to posts: a "delete" task outlives its post.
CREATE TABLE post_tasks (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shard      INTEGER NOT NULL,
    post_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    args       TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX post_tasks_shard_idx ON post_tasks (shard, id);
