"""Media files by suffix (compared in lower case), in a module of their own so that the modules
that name them need not import PyAV (`controlfoley._media` re-exports them)."""

__all__ = ["VIDEO_SUFFIXES", "SOUNDFILE_SUFFIXES", "FFMPEG_AUDIO_SUFFIXES", "GENERATE_SUFFIXES"]

# video containers FFmpeg reads that a folder argument picks up (compared in lower case): files that
# can hold a soundtrack, which `evaluate` scores and `extract` trains on
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".mpeg",
    ".3gp", ".3g2", ".mts", ".m2ts", ".flv", ".f4v", ".wmv", ".asf", ".ogv", ".vob", ".dv", ".mxf",  # phones, camcorders, Flash, Windows, Theora
})  # fmt: skip
# audio files by suffix: what libsndfile reads (controlfoley.audio.io.load_audio), and audio-only
# containers FFmpeg reads (video.read_audio_file picks the reader by these)
SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff"})
FFMPEG_AUDIO_SUFFIXES = frozenset({".m4a", ".aac", ".opus", ".wma"})
# what a folder among `generate`'s inputs stands for: those and animated GIFs, pictures without a
# soundtrack (foley for one is what generate makes; evaluate and extract would find no audio in it)
GENERATE_SUFFIXES = VIDEO_SUFFIXES | {".gif"}
