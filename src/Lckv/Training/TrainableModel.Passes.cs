using System.Numerics.Tensors;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Numerics.Backward;

namespace Lckv.Training;

/// <summary>Which KV a layer read: zeros (K null: a first pass reading upward), a constant, or a recorded version.</summary>
internal readonly record struct KvRef(float[]? K, float[]? V, int Record);

/// <summary>What one recorded layer evaluation keeps for its backward.</summary>
internal sealed class LayerRecord(int layer, bool ownsKv, LayerWork work)
{
    public readonly int Layer = layer;
    public readonly bool OwnsKv = ownsKv;
    public readonly LayerWork Work = work;
    public readonly LayerBuffers B = new();
    /// <summary>The KV this evaluation wrote (post-RoPE K) and the gradients its readers add to it.</summary>
    public float[] K = [], V = [], DK = [], DV = [];
    public KvRef Read;

    public void Size(long rows, int hidden, int qDim, int kvDim, int inter, int heads)
    {
        B.X = Grow(B.X, rows * hidden); B.Xn1 = Grow(B.Xn1, rows * hidden); B.H1 = Grow(B.H1, rows * hidden); B.Xn2 = Grow(B.Xn2, rows * hidden);
        B.Q = Grow(B.Q, rows * qDim); B.Att = Grow(B.Att, rows * qDim); B.Lse = Grow(B.Lse, rows * heads);
        B.G = Grow(B.G, rows * inter); B.U = Grow(B.U, rows * inter); B.A = Grow(B.A, rows * inter);
        if (OwnsKv)
        {
            K = GrowPinned(K, rows * kvDim); V = GrowPinned(V, rows * kvDim); DK = Grow(DK, rows * kvDim); DV = Grow(DV, rows * kvDim);
        }
    }

    internal static float[] Grow(float[] a, long n) => a.LongLength >= n ? a : new float[n];

    // KV the attention kernel reads through raw pointers
    internal static float[] GrowPinned(float[] a, long n) => a.LongLength >= n ? a : GC.AllocateArray<float>((int)n, pinned: true);
}

public sealed unsafe partial class TrainableModel : IPlanHost, IKvStores
{
    private LayerRecord[] _records = [];
    private readonly LayerBuffers _scratch = new();
    private int _capacityRows;
    private int _batch, _seqLen, _rows;
    private float[] _hGroup = [], _hOut = [], _xnF = [], _tmp = [], _logits = [], _rowLoss = [], _rstd = [];
    private float[] _dCur = [], _dAcc = [], _dCarry = [], _dXn = [], _dInter = [], _dUp = [], _dAtt = [], _dQ = [];
    private float[][] _slotK = [], _slotV = [];
    private int[] _positions = [], _targets = [];
    private KvRef[] _current = [];
    private AttentionSequence[] _views = [];
    private bool _recording;
    private int _record, _passEndRecord, _currentRecord = -1;

    private int Hidden => Config.HiddenSize;
    private int QDim => Config.NumAttentionHeads * Config.HeadDim;
    private int KvDim => Config.NumKeyValueHeads * Config.HeadDim;
    private int Inter => Config.IntermediateSize;
    private float Eps => Config.RmsNormEps;

    public float LossAndGradients(ReadOnlySpan<int> tokens, int batch, int seqLen, float gradScale = 1f)
        => Run(tokens, batch, seqLen, gradient: true, gradScale, logitsOut: default);

    public float Loss(ReadOnlySpan<int> tokens, int batch, int seqLen)
        => Run(tokens, batch, seqLen, gradient: false, 0f, logitsOut: default);

    /// <summary>Forward through the plan (no gradients): logits [batch*seqLen, vocab] into dst; returns the loss.</summary>
    public float Logits(ReadOnlySpan<int> tokens, int batch, int seqLen, Span<float> dst)
    {
        if (dst.Length < (long)batch * seqLen * Config.VocabSize) throw new ArgumentException("logits destination too short", nameof(dst));
        return Run(tokens, batch, seqLen, gradient: false, 0f, dst);
    }

    private float Run(ReadOnlySpan<int> tokens, int batch, int seqLen, bool gradient, float gradScale, Span<float> logitsOut)
    {
        if (batch <= 0 || seqLen < 2) throw new ArgumentException($"need batch >= 1 and seqLen >= 2, got {batch} x {seqLen}");
        if (tokens.Length != batch * seqLen) throw new ArgumentException($"tokens holds {tokens.Length} ids, expected {batch} x {seqLen}");
        int vocab = Config.VocabSize;
        foreach (int id in tokens)
            if ((uint)id >= (uint)vocab) throw new LckvException($"token id {id} is outside the vocabulary (size {vocab})");
        Prepare(batch, seqLen);
        int n = _rows, c = Hidden;
        for (int r = 0; r < n; r++)
        {
            _embed.Value.AsSpan(tokens[r] * c, c).CopyTo(_hGroup.AsSpan(r * c, c));
            int t = r % seqLen;
            _targets[r] = t == seqLen - 1 ? -1 : tokens[r + 1];
        }
        Array.Clear(_current);
        _recording = gradient;
        _record = 0;
        IterationPlan.Execute(_plan, Map, wholeSequence: true, this);
        Norm(Slice(_hGroup, n * c), _finalNorm, Slice(_xnF, n * c), n);
        var logits = Slice(_logits, n * vocab);
        Linear(Slice(_xnF, n * c), _head, logits, n);
        if (!logitsOut.IsEmpty) logits.CopyTo(logitsOut);
        int count = batch * (seqLen - 1);
        double sum = CrossEntropy.Apply(logits, _targets.AsSpan(0, n), vocab, _rowLoss, gradient ? logits : default, gradScale / count);
        if (gradient) Backward(tokens);
        return (float)(sum / count);
    }

    // a pass with gradient records each layer it evaluates (the backward walks the records in reverse); a pass without
    // runs in one scratch set in place
    void IPlanHost.BeginPass(PlanPass pass, bool firstOfGroup)
    {
        int n = _rows * Hidden;
        if (_recording && pass.Gradient)
        {
            _passEndRecord = _record;
            for (int l = pass.Start; l < pass.End; l++)
                if (IterationPlan.Work(Map, pass, l) != LayerWork.Skip) _passEndRecord++;
            Slice(_hGroup, n).CopyTo(_records[_record].B.X);
        }
        else Slice(_hGroup, n).CopyTo(_scratch.X);
    }

    void IPlanHost.Layer(PlanPass pass, int layer, LayerWork work, bool zeroAttention)
    {
        LayerBuffers b;
        if (_recording && pass.Gradient)
        {
            var a = _records[_record];
            a.B.Out = _record + 1 < _passEndRecord ? _records[_record + 1].B.X : _hOut;
            a.Read = default;
            _currentRecord = _record++;
            b = a.B;
        }
        else
        {
            _currentRecord = -1;
            b = _scratch;
        }
        DecoderLayer.Forward(_ctx, _layerWeights[layer], layer, work, zeroAttention, b, this);
    }

    void IPlanHost.EndPass(PlanPass pass)
    {
        if (!pass.Advances) return;
        if (!(_recording && pass.Gradient)) Slice(_scratch.X, _rows * Hidden).CopyTo(_hOut);
        (_hGroup, _hOut) = (_hOut, _hGroup);
    }

    void IKvStores.Target(int kvIndex, out Span<float> k, out Span<float> v)
    {
        int n = _rows * KvDim;
        bool own = _currentRecord >= 0;
        k = Slice(own ? _records[_currentRecord].K : _slotK[kvIndex], n);
        v = Slice(own ? _records[_currentRecord].V : _slotV[kvIndex], n);
    }

    void IKvStores.Commit(int kvIndex)
    {
        bool own = _currentRecord >= 0;
        _current[kvIndex] = own
            ? new KvRef(_records[_currentRecord].K, _records[_currentRecord].V, _currentRecord)
            : new KvRef(_slotK[kvIndex], _slotV[kvIndex], -1);
    }

    bool IKvStores.Read(int kvIndex, out KvStorage storage, out ReadOnlySpan<AttentionSequence> sequences)
    {
        var src = _current[kvIndex];
        if (_currentRecord >= 0) _records[_currentRecord].Read = src;
        sequences = _views.AsSpan(0, _batch);
        if (src.K is null)
        {
            storage = default;
            return false;
        }
        fixed (float* k = src.K, v = src.V!) // pinned arrays: the addresses stay valid after the fixed block
            storage = KvStorage.Contiguous(k, v, _seqLen, Config.NumKeyValueHeads, Config.HeadDim);
        return true;
    }

    ReadOnlySpan<int> IKvStores.KeyPositions(int kvIndex) => _positions.AsSpan(0, _rows);

    ReadOnlySpan<int> IKvStores.QueryPositions(int kvIndex) => _positions.AsSpan(0, _rows);

    private void Prepare(int batch, int seqLen)
    {
        int n = batch * seqLen;
        _batch = batch;
        _seqLen = seqLen;
        _rows = n;
        if (seqLen > _ctx.Rope.MaxPositions) _ctx.Rope = new RopeTable(Config.HeadDim, Config.RopeTheta, seqLen, Config.RopeStyle);
        if (_records.Length == 0)
        {
            var list = new List<LayerRecord>();
            foreach (var pass in _plan)
                if (pass.Gradient)
                    for (int l = pass.Start; l < pass.End; l++)
                    {
                        var work = IterationPlan.Work(Map, pass, l);
                        if (work != LayerWork.Skip) list.Add(new LayerRecord(l, Map.ComputesKv(l), work));
                    }
            _records = list.ToArray();
            _slotK = new float[Map.KvLayerCount][];
            _slotV = new float[Map.KvLayerCount][];
            for (int i = 0; i < _slotK.Length; i++) { _slotK[i] = []; _slotV[i] = []; }
            _current = new KvRef[Map.KvLayerCount];
        }
        if (_positions.Length < n) { _positions = new int[n]; _targets = new int[n]; }
        for (int r = 0; r < n; r++) _positions[r] = r % seqLen;
        _ctx.Positions = _positions;
        _ctx.Rows = n;
        if (_views.Length != batch || (batch > 0 && _views[0].QueryCount != seqLen))
        {
            // sequence b's queries are rows [b*T, (b+1)*T); its keys are block b of the contiguous K/V
            _views = new AttentionSequence[batch];
            for (int b = 0; b < batch; b++) _views[b] = new AttentionSequence(b * seqLen, seqLen, 0, KvView.Linear([b], seqLen));
        }
        if (n <= _capacityRows) return;
        _capacityRows = n;
        int c = Hidden, qd = QDim, kvd = KvDim, inter = Inter, heads = Config.NumAttentionHeads;
        long rows = n;
        foreach (var a in _records) a.Size(n, c, qd, kvd, inter, heads);
        var s = _scratch;
        s.X = s.H1 = s.Out = new float[rows * c];
        s.Xn1 = s.Xn2 = new float[rows * c];
        s.Q = new float[rows * qd]; s.Att = new float[rows * qd];
        s.G = new float[rows * inter]; s.U = new float[rows * inter]; s.A = s.G;
        for (int i = 0; i < _slotK.Length; i++) { _slotK[i] = LayerRecord.GrowPinned([], rows * kvd); _slotV[i] = LayerRecord.GrowPinned([], rows * kvd); }
        _hGroup = new float[rows * c]; _hOut = new float[rows * c]; _xnF = new float[rows * c]; _tmp = new float[rows * c];
        foreach (var a in _records) a.B.Tmp = _tmp;
        s.Tmp = _tmp;
        _logits = new float[rows * Config.VocabSize]; _rowLoss = new float[rows]; _rstd = new float[rows];
        _dCur = new float[rows * c]; _dAcc = new float[rows * c]; _dCarry = new float[rows * c]; _dXn = new float[rows * c];
        _dInter = new float[rows * inter]; _dUp = new float[rows * inter];
        _dAtt = new float[rows * qd]; _dQ = new float[rows * qd];
    }


    private void Backward(ReadOnlySpan<int> tokens)
    {
        int n = _rows, c = Hidden, vocab = Config.VocabSize;
        var dlogits = Slice(_logits, n * vocab);
        var dxnF = Slice(_dXn, n * c);
        LinearBackward(dlogits, Slice(_xnF, n * c), _head, dxnF, accumulate: false, n);
        var dCarry = Slice(_dCarry, n * c);
        dCarry.Clear();
        RmsNormBackward.Apply(dxnF, Slice(_hGroup, n * c), _finalNorm.Value, Eps, dCarry, _finalNorm.Grad, _rstd, n);
        foreach (var a in _records)
        {
            if (!a.OwnsKv) continue;
            Array.Clear(a.DK, 0, n * KvDim);
            Array.Clear(a.DV, 0, n * KvDim);
        }
        var dCur = Slice(_dCur, n * c);
        var dAcc = Slice(_dAcc, n * c);
        int rec = _records.Length;
        for (int p = _plan.Count - 1; p >= 0; p--)
        {
            var pass = _plan[p];
            if (!pass.Gradient) continue;
            // the advancing pass receives the gradient of the group's output; the others only feed KV forward
            if (pass.Advances)
            {
                dCarry.CopyTo(dCur);
                dAcc.Clear();
            }
            else dCur.Clear();
            for (int layer = pass.End - 1; layer >= pass.Start; layer--)
                if (IterationPlan.Work(Map, pass, layer) != LayerWork.Skip) LayerBackward(_records[--rec], dCur);
            // every pass of a group starts from the group's input: their input gradients add up
            TensorPrimitives.Add(dAcc, dCur, dAcc);
            bool firstRecorded = p == 0 || !_plan[p - 1].Gradient || _plan[p - 1].Start != pass.Start;
            if (firstRecorded) dAcc.CopyTo(dCarry);
        }
        for (int r = 0; r < n; r++)
        {
            var row = _embed.Grad.AsSpan(tokens[r] * c, c);
            TensorPrimitives.Add(row, dCarry.Slice(r * c, c), row);
        }
    }

    // dCur holds the gradient of the layer's output on entry and of its input on exit
    private void LayerBackward(LayerRecord r, Span<float> dCur)
    {
        var a = r.B;
        var lp = _layers[r.Layer];
        var cfg = Config;
        int n = _rows, c = Hidden, qd = QDim, kvd = KvDim, inter = Inter;
        var positions = _positions.AsSpan(0, n);
        var dXn = Slice(_dXn, n * c);
        var xn1 = Slice(a.Xn1, n * c);
        bool any = false;
        if (r.Work == LayerWork.KvOnly) goto Kv; // dCur is zero: only the KV this layer wrote carries gradient
        var dA = Slice(_dInter, n * inter);
        var dU = Slice(_dUp, n * inter);
        LinearBackward(dCur, Slice(a.A, n * inter), lp.Down, dA, accumulate: false, n);
        SwiGluBackward.Apply(dA, Slice(a.G, n * inter), Slice(a.U, n * inter), dA, dU);
        var xn2 = Slice(a.Xn2, n * c);
        LinearBackward(dA, xn2, lp.Gate, dXn, accumulate: false, n);
        LinearBackward(dU, xn2, lp.Up, dXn, accumulate: true, n);
        RmsNormBackward.Apply(dXn, Slice(a.H1, n * c), lp.PostNorm.Value, Eps, dCur, lp.PostNorm.Grad, _rstd, n);
        var src = r.Read;
        if (src.K is not null)
        {
            var dAtt = Slice(_dAtt, n * qd);
            var dQ = Slice(_dQ, n * qd);
            LinearBackward(dCur, Slice(a.Att, n * qd), lp.O, dAtt, accumulate: false, n);
            Span<float> dk = default, dv = default;
            if (src.Record >= 0)
            {
                dk = Slice(_records[src.Record].DK, n * kvd);
                dv = Slice(_records[src.Record].DV, n * kvd);
            }
            DenseAttention.Backward(Slice(a.Q, n * qd), src.K, src.V!, Slice(a.Att, n * qd), a.Lse, dAtt, _batch, _seqLen,
                cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, _ctx.Masks[r.Layer], _ctx.Scale, dQ, dk, dv);
            RopeBackward.Apply(dQ, positions, cfg.NumAttentionHeads, _ctx.Rope);
            LinearBackward(dQ, xn1, lp.Q, dXn, accumulate: false, n);
            any = true;
        }
    Kv:
        if (r.OwnsKv)
        {
            // every reader of this KV comes later in the forward, so its gradient is complete here
            var dk = Slice(r.DK, n * kvd);
            RopeBackward.Apply(dk, positions, cfg.NumKeyValueHeads, _ctx.Rope);
            LinearBackward(dk, xn1, lp.K!, dXn, accumulate: any, n);
            LinearBackward(Slice(r.DV, n * kvd), xn1, lp.V!, dXn, accumulate: true, n);
            any = true;
        }
        if (any) RmsNormBackward.Apply(dXn, Slice(a.X, n * c), lp.InputNorm.Value, Eps, dCur, lp.InputNorm.Grad, _rstd, n);
    }

    private static void Linear(ReadOnlySpan<float> x, Parameter w, Span<float> y, int n)
    {
        fixed (float* p = w.Value) MatMul.Multiply(x, View(p, w), y, n);
    }

    private void Norm(ReadOnlySpan<float> x, Parameter w, Span<float> y, int n)
    {
        fixed (float* p = w.Value) RmsNorm.Apply(x, View(p, w), Eps, y, n);
    }

    // y = x·Wᵀ: dx (+)= dy·W, dW += dyᵀ·x
    private static void LinearBackward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Parameter w, Span<float> dx, bool accumulate, int n)
    {
        int outDim = Rows(w), inDim = Cols(w);
        MatMulBackward.InputGradient(dy, w.Value, dx, n, outDim, inDim, accumulate);
        MatMulBackward.WeightGradient(dy, x, w.Grad, n, outDim, inDim);
    }
}
