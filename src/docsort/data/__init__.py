"""The data contract, preparation, the prepared folder, augmentation, previews and the sample dataset."""
