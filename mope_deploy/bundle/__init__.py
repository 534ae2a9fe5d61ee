"""The export bundle contract, below both the exporter and the runtime: file names (:mod:`.names`), the typed
manifest with its one reader and one writer (:mod:`.manifest`), and the folder accessor (:mod:`.directory`)."""

from .directory import Bundle
from .manifest import (ONNXRUNTIME, PORTABLE, SCHEMA_VERSION, Engine, EncoderSpec, EngineSet, FileRecord, Gates,
                       Manifest, Source, Sparsity, TensorSpec, Variant, file_table, library_versions, read_manifest,
                       write_manifest)
from .names import (BUILD_LOG_FILE, BUNDLE_OWNER, DEPLOY_NAMES, INPUT_NAMES, MANIFEST_FILE, OUTPUT_NAME, REEXPORT,
                    TIMING_CACHE_FILE, TRITON_DIR, BundleError, engine_name, onnx_name, program_name, variant_names)

__all__ = ["Bundle", "BundleError", "Manifest", "Variant", "Engine", "EngineSet", "EncoderSpec", "TensorSpec",
           "FileRecord", "Gates", "Source", "Sparsity", "SCHEMA_VERSION", "ONNXRUNTIME", "PORTABLE", "read_manifest",
           "write_manifest", "file_table", "library_versions", "BUILD_LOG_FILE", "BUNDLE_OWNER", "DEPLOY_NAMES",
           "INPUT_NAMES", "MANIFEST_FILE", "OUTPUT_NAME", "REEXPORT", "TIMING_CACHE_FILE", "TRITON_DIR",
           "engine_name", "onnx_name", "program_name", "variant_names"]
