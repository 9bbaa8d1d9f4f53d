"""UperNet + ConvNeXt: mmsegmentation 0.30 (mmseg0) and 1.2 (mmseg1) origins vs transformers UperNetForSemanticSegmentation."""
