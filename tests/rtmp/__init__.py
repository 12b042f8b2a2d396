"""Tests of b2bua.rtmp."""
