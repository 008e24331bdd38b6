"""One root error class with a few precise subclasses.

Every error a user can cause is a ``SpaceError``; messages name the dataset, version or
field at fault so the CLI can print them as one line.
"""


class SpaceError(Exception):
    """Root of every spacefs error."""


class UserInputError(SpaceError, ValueError):
    """The arguments of a call are invalid (bad schema, field, filter, name...)."""


class SchemaError(UserInputError):
    """A schema, or data that does not match the dataset's schema."""


class FilterError(UserInputError):
    """A filter that cannot be parsed or applied."""


class NotFoundError(SpaceError, LookupError):
    """A dataset, version, tag, branch or file that does not exist."""


class VersionNotFoundError(NotFoundError):
    """A snapshot id, tag or branch that does not exist."""


class AlreadyExistsError(SpaceError):
    """Creating something (dataset, tag, branch) that already exists."""


class PrimaryKeyExistsError(SpaceError):
    """An insert of a key that is already stored, or a batch with duplicate keys."""


class CommitConflictError(SpaceError):
    """A commit lost to concurrent writers more often than the retry budget allows."""


class CorruptionError(SpaceError):
    """Stored metadata or data does not read back as written."""


class StorageError(SpaceError):
    """The storage behind a location failed: missing bucket, refused credentials, unreachable endpoint."""


class MergeConflictError(SpaceError):
    """A merge found keys changed differently on both sides; nothing was changed.

    ``keys`` is a ``pa.Table`` of the conflicting primary keys.
    """

    def __init__(self, message: str, keys=None):
        super().__init__(message)
        self.keys = keys


class SnapshotExpiredError(VersionNotFoundError):
    """A snapshot (or one on the path between two versions) was removed by expiry."""
