"""Video anonymization: probe, decode, find faces per frame, link them into tracks,
obscure every track over its whole extent, encode, and copy the audio untouched.

Two passes over a local file, so memory stays constant in the video's length: pass 1
decodes and detects (keeping only small boxes per frame), tracks are built from those
boxes, pass 2 decodes again, obscures and encodes. No frame is ever kept beyond the one
being worked on.
"""
