// Placeholder for the device blocks check.
