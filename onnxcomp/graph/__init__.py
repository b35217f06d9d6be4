"""The graph floor: load, save, convert, order, shapes and op facts. Knows no technique."""
