"""``TfFeatures``: a record field type holding nested dicts of numpy arrays.

The values are stored as the bytes the TFDS feature serializer makes of them
(``FeaturesDict.serialize_example``); the type carries the ``FeaturesDict``'s JSON config,
so a stored schema knows how to decode its records without the code that wrote them.
TensorFlow Datasets is imported only when a value is (de)serialized: opening a dataset
with such a field, or importing spacefs, stays fast.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from .errors import SchemaError

EXTENSION_NAME = "spacefs.tf_features"


class TfFeatures(pa.ExtensionType):
    """A binary record field serialized with a TFDS ``FeaturesDict``.

    Example::

        features = tfds.features.FeaturesDict({"bbox": tfds.features.BBoxFeature(), "id": np.int64})
        schema = pa.schema([("id", pa.int64()), ("objects", TfFeatures(features))])

    Writes accept the nested dicts themselves (or already serialized bytes);
    ``RandomAccessDataSource(..., deserialize=True)`` returns them decoded.
    """

    def __init__(self, features_dict: Any = None, *, config: str | None = None):
        if features_dict is not None:
            if not hasattr(features_dict, "to_json") or not hasattr(features_dict, "serialize_example"):
                raise SchemaError(f"TfFeatures needs a tfds.features.FeaturesDict, got {type(features_dict).__name__}")
            config = json.dumps(features_dict.to_json(), sort_keys=True)
        elif config is None:
            raise SchemaError("TfFeatures needs a tfds.features.FeaturesDict")
        self._config = config
        self._features = features_dict
        self._lock = threading.Lock()
        super().__init__(pa.binary(), EXTENSION_NAME)

    # -- Arrow extension protocol ---------------------------------------------
    def __arrow_ext_serialize__(self) -> bytes:
        return self._config.encode()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> TfFeatures:
        return cls(config=serialized.decode())

    # -- the serializer ----------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The ``FeaturesDict`` as TFDS describes it in JSON."""
        return json.loads(self._config)

    @property
    def features_dict(self) -> Any:
        """The ``tfds.features.FeaturesDict``, rebuilt from its config on first use."""
        if self._features is None:
            with self._lock:
                if self._features is None:
                    import tensorflow_datasets as tfds

                    self._features = tfds.features.FeatureConnector.from_json(self.config)
        return self._features

    def serialize(self, value: Any) -> bytes:
        """A nested dict of numpy arrays (or Python values) as bytes."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        return self.features_dict.serialize_example(value)

    def deserialize(self, value: bytes) -> Any:
        """Bytes back to the nested dict of numpy arrays."""
        return self.features_dict.deserialize_example_np(value)

    def encode_values(self, values: Iterable[Any]) -> list[bytes | None]:
        """A column of values as stored bytes (``None`` stays null)."""
        return [None if v is None else self.serialize(v) for v in values]

    def __reduce__(self) -> tuple[Any, ...]:
        return TfFeatures.__arrow_ext_deserialize__, (pa.binary(), self.__arrow_ext_serialize__())

    def __repr__(self) -> str:
        return f"TfFeatures({self._config[:80]}{'...' if len(self._config) > 80 else ''})"


def register() -> None:
    """Let Arrow rebuild ``TfFeatures`` when it reads a stored schema."""
    try:
        pa.register_extension_type(TfFeatures(config="{}"))
    except pa.ArrowKeyError:
        pass  # already registered (module reloaded)


register()
