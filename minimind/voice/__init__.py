"""Talk to a trained model: wake word -> utterance -> speech recognition -> chat -> reply (printed, spoken).

    audio (microphone, WAV file or raw PCM on stdin; 16 kHz mono 16-bit)
      -> backend (backend.py): voice activity detection / endpointing cuts the stream into utterances,
         a recogniser turns each into text and says whether it began with the wake word
      -> listen.py: the wake-word state machine picks the utterances meant for the model
      -> text.py: spoken words -> written text ("twelve plus thirty" -> "12 plus 30")
      -> minimind.infer.chat.stream_reply: the same streaming chat path as `minimind chat`
      -> tts.py: espeak-ng reads the reply aloud (--speak)

Backends: pocketsphinx (sphinx.py: works offline out of the box; its wheel ships an English acoustic
model) and sherpa-onnx (sherpa.py: neural keyword spotting and recognition from model directories).
`minimind voice --help` and docs/voice.md describe the setup of both.
"""
