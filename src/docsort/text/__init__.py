"""Reading the page: OCR (``text.ocr``), the stage that turns document images into text."""
