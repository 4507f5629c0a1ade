"""Classification strategies behind one interface (`Strategy`)."""
