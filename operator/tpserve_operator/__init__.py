"""tpserve operator: TPInferenceService -> tensor-parallel groups of StatefulSets and Services."""
