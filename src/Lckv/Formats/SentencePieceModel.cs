using System.Buffers.Binary;
using System.Text;

namespace Lckv.Formats;

/// <summary>
/// The parts of a SentencePiece ModelProto that a GGUF "llama" vocabulary carries: the pieces with their scores and
/// types, and the trainer and normalizer settings that change encoding. Read from a tokenizer.model to write GGUF, and
/// written back as a ModelProto so that Microsoft.ML.Tokenizers encodes a GGUF vocabulary.
/// </summary>
/// <remarks>Fields (sentencepiece_model.proto, proto2 defaults when absent): ModelProto 1 pieces {1 piece, 2 score,
/// 3 type}, 2 trainer_spec {3 model_type (1 unigram, 2 BPE), 24 treat_whitespace_as_suffix, 35 byte_fallback, 40 unk_id,
/// 41 bos_id, 42 eos_id, 43 pad_id}, 3 normalizer_spec {1 name, 3 add_dummy_prefix, 4 remove_extra_whitespaces,
/// 5 escape_whitespaces}.</remarks>
public sealed record SentencePieceModel
{
    public const int Unigram = 1, Bpe = 2;

    public required IReadOnlyList<(string Piece, float Score, int Type)> Pieces { get; init; }
    public int ModelType { get; init; } = Unigram;
    public bool ByteFallback { get; init; }
    public bool TreatWhitespaceAsSuffix { get; init; }
    public int UnkId { get; init; }
    public int BosId { get; init; } = 1;
    public int EosId { get; init; } = 2;
    public int PadId { get; init; } = -1;
    public string NormalizerName { get; init; } = "";
    public bool AddDummyPrefix { get; init; } = true;
    public bool RemoveExtraWhitespaces { get; init; } = true;
    public bool EscapeWhitespaces { get; init; } = true;

    /// <summary>Parses a ModelProto; FormatException when it is not one.</summary>
    public static SentencePieceModel Read(ReadOnlySpan<byte> data)
    {
        var pieces = new List<(string, float, int)>();
        var m = new SentencePieceModel { Pieces = pieces };
        var r = new ProtoReader(data);
        while (r.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) pieces.Add(ReadPiece(r.Message()));
            else if (field == 2 && wire == 2) m = ReadTrainer(r.Message(), m);
            else if (field == 3 && wire == 2) m = ReadNormalizer(r.Message(), m);
            else r.Skip(wire);
        }
        return m;
    }

    private static (string, float, int) ReadPiece(ReadOnlySpan<byte> data)
    {
        string piece = "";
        float score = 0;
        int type = 1;
        var r = new ProtoReader(data);
        while (r.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) piece = Encoding.UTF8.GetString(r.Message());
            else if (field == 2 && wire == 5) score = r.Fixed32();
            else if (field == 3 && wire == 0) type = (int)r.Varint();
            else r.Skip(wire);
        }
        return (piece, score, type);
    }

    private static SentencePieceModel ReadTrainer(ReadOnlySpan<byte> data, SentencePieceModel m)
    {
        var r = new ProtoReader(data);
        while (r.Next(out int field, out int wire))
        {
            if (wire != 0) { r.Skip(wire); continue; }
            long v = (long)r.Varint();
            m = field switch
            {
                3 => m with { ModelType = (int)v },
                24 => m with { TreatWhitespaceAsSuffix = v != 0 },
                35 => m with { ByteFallback = v != 0 },
                40 => m with { UnkId = (int)v },
                41 => m with { BosId = (int)v },
                42 => m with { EosId = (int)v },
                43 => m with { PadId = (int)v },
                _ => m,
            };
        }
        return m;
    }

    private static SentencePieceModel ReadNormalizer(ReadOnlySpan<byte> data, SentencePieceModel m)
    {
        var r = new ProtoReader(data);
        while (r.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) { m = m with { NormalizerName = Encoding.UTF8.GetString(r.Message()) }; continue; }
            if (wire != 0) { r.Skip(wire); continue; }
            bool v = r.Varint() != 0;
            m = field switch
            {
                3 => m with { AddDummyPrefix = v },
                4 => m with { RemoveExtraWhitespaces = v },
                5 => m with { EscapeWhitespaces = v },
                _ => m,
            };
        }
        return m;
    }

    /// <summary>The ModelProto bytes, every setting written explicitly (proto2 defaults are not assumed).</summary>
    public byte[] Write()
    {
        var w = new ProtoWriter();
        foreach (var (piece, score, type) in Pieces)
        {
            var p = new ProtoWriter();
            p.Bytes(1, Encoding.UTF8.GetBytes(piece));
            p.Fixed32(2, score);
            p.Varint(3, (ulong)type);
            w.Bytes(1, p.ToArray());
        }
        var t = new ProtoWriter();
        t.Varint(3, (ulong)ModelType);
        t.Varint(24, TreatWhitespaceAsSuffix ? 1UL : 0);
        t.Varint(35, ByteFallback ? 1UL : 0);
        // int32 fields: a negative value is the varint of its sign-extended 64 bits
        t.Varint(40, (ulong)(long)UnkId);
        t.Varint(41, (ulong)(long)BosId);
        t.Varint(42, (ulong)(long)EosId);
        t.Varint(43, (ulong)(long)PadId);
        w.Bytes(2, t.ToArray());
        var n = new ProtoWriter();
        n.Bytes(1, Encoding.UTF8.GetBytes(NormalizerName));
        n.Varint(3, AddDummyPrefix ? 1UL : 0);
        n.Varint(4, RemoveExtraWhitespaces ? 1UL : 0);
        n.Varint(5, EscapeWhitespaces ? 1UL : 0);
        w.Bytes(3, n.ToArray());
        return w.ToArray();
    }

    private ref struct ProtoReader(ReadOnlySpan<byte> data)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private int _pos;

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (_pos >= _data.Length) return false;
            ulong key = Varint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            return true;
        }

        public ulong Varint()
        {
            ulong v = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= _data.Length) throw new FormatException("truncated varint");
                byte b = _data[_pos++];
                v |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return v;
            }
            throw new FormatException("varint too long");
        }

        public float Fixed32()
        {
            if (_data.Length - _pos < 4) throw new FormatException("truncated fixed32");
            float f = BinaryPrimitives.ReadSingleLittleEndian(_data.Slice(_pos, 4));
            _pos += 4;
            return f;
        }

        public ReadOnlySpan<byte> Message()
        {
            ulong len = Varint();
            if (len > (ulong)(_data.Length - _pos)) throw new FormatException("field runs past the end");
            var span = _data.Slice(_pos, (int)len);
            _pos += (int)len;
            return span;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: Advance(8); break;
                case 2: Message(); break;
                case 5: Advance(4); break;
                default: throw new FormatException($"unsupported protobuf wire type {wire}");
            }
        }

        private void Advance(int n)
        {
            if (_data.Length - _pos < n) throw new FormatException("field runs past the end");
            _pos += n;
        }
    }

    private sealed class ProtoWriter
    {
        private readonly MemoryStream _s = new();

        public void Varint(int field, ulong v)
        {
            Raw(((ulong)field << 3) | 0);
            Raw(v);
        }

        public void Fixed32(int field, float f)
        {
            Raw(((ulong)field << 3) | 5);
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteSingleLittleEndian(b, f);
            _s.Write(b);
        }

        public void Bytes(int field, ReadOnlySpan<byte> bytes)
        {
            Raw(((ulong)field << 3) | 2);
            Raw((ulong)bytes.Length);
            _s.Write(bytes);
        }

        private void Raw(ulong v)
        {
            while (v >= 0x80)
            {
                _s.WriteByte((byte)(v | 0x80));
                v >>= 7;
            }
            _s.WriteByte((byte)v);
        }

        public byte[] ToArray() => _s.ToArray();
    }
}
